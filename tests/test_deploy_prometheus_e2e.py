"""End to end with a real Prometheus server (Debian package `prometheus`) on 127.0.0.1.

Started here, all on loopback: the embedded Kafka-protocol broker (`python -m
publisher.embedded_broker`), the Kalshi and ZLL simulators (`python -m publisher.sim ...`), and
`fill-publisher run` with a config pointing at them. Prometheus runs with the compose stack's
deploy/prometheus/prometheus.yml, re-targeted at that process and with 1 s scrape/evaluation
intervals, and with a copy of the single rule file helm/fill-publisher/files/alerts.yml in which
every `for:` is set to 0s (derived programmatically here; nothing else of the rules changes, so
the real expressions, windows and thresholds are what is exercised).

Shown: Prometheus scrapes the contract's metrics with their labels; no poll-error alert while the
venues are healthy; after injecting HTTP 500s into the Kalshi simulator (`POST /_sim/faults`),
FillPublisherPollErrorRatioHigh fires for that source with reason http_5xx, and not for ZLL.
"""

from __future__ import annotations

import calendar
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
import deploy_support as ds

pytestmark = pytest.mark.integration

T = TypeVar("T")
PROMETHEUS_YML = ds.REPO / "deploy" / "prometheus" / "prometheus.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, procs: dict[str, Proc]) -> T:
    """Poll `probe` until it returns something truthy; fail (with the children's logs) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs.values():
            proc.check_alive()
        try:
            result = probe()
        except (OSError, urllib.error.URLError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n" + "\n".join(p.tail() for p in procs.values()))
        time.sleep(0.25)


class Proc:
    """A child process with its output in a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = workdir / f"{name}.log"
        self._log = self.log.open("w")
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE if name in ("broker", "kalshi", "zll") else self._log,
            stderr=self._log, text=True, cwd=workdir, env=env,
        )

    def first_line(self, timeout: float = 30) -> str:
        """The first stdout line (the broker's bootstrap, a simulator's URL)."""
        import selectors

        assert self.popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"{self.name} printed nothing in {timeout}s\n{self.tail()}")
        line = self.popen.stdout.readline().strip()
        if not line:
            pytest.fail(f"{self.name} exited without output\n{self.tail()}")
        return line

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        self._log.flush()
        return f"--- {self.name} ---\n{self.log.read_text(errors='replace')[-n:]}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log.close()


def http_json(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
    return json.loads(text) if text.strip() else None


def test_rules_for_e2e_zero_durations(tmp_path: Path) -> None:
    rules = e2e_rules(tmp_path)
    groups = yaml.safe_load(rules.read_text())["groups"]
    original = ds.load_rule_groups()
    assert [r["alert"] for g in groups for r in g["rules"]] == [r["alert"] for g in original for r in g["rules"]]
    for g, og in zip(groups, original, strict=True):
        for r, orr in zip(g["rules"], og["rules"], strict=True):
            assert r["for"] == "0s" and r["expr"] == orr["expr"] and r["labels"] == orr["labels"]


def e2e_rules(directory: Path) -> Path:
    """The single rule file with every `for:` set to 0s, so alerts fire on the first evaluation."""
    groups = ds.load_rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path = directory / "rules" / "fill-publisher-e2e.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    prometheus = ds.tool("prometheus")
    if prometheus is None:
        pytest.fail("the prometheus server is missing: apt-get install -y prometheus")
    cli = ds.fill_publisher_cli()
    if cli is None:
        pytest.skip("publisher.cli (fill-publisher run) is not on this branch yet")
    for module in ("publisher.sim.__main__", "publisher.embedded_broker"):
        try:
            __import__(module)
        except ImportError as exc:
            pytest.skip(f"{module} is not on this branch yet: {exc}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")}
    procs: dict[str, Proc] = {}
    try:
        procs["broker"] = Proc("broker", [sys.executable, "-m", "publisher.embedded_broker", "--exit-with-parent"], tmp_path, env)
        bootstrap = procs["broker"].first_line()
        keys = tmp_path / "keys"
        urls = {}
        for venue in ("kalshi", "zll"):
            procs[venue] = Proc(venue, [sys.executable, "-m", "publisher.sim", venue, "--host", "127.0.0.1",
                                        "--port", "0", "--key-dir", str(keys), "--fills-per-s", "5"], tmp_path, env)
            urls[venue] = procs[venue].first_line().rsplit(" ", 1)[-1]
        http_port = free_port()
        config = {
            "kafka": {"bootstrap_servers": bootstrap, "check_crcs": False},
            "http": {"host": "127.0.0.1", "port": http_port},
            "sources": [
                {"name": "kalshi-e2e", "venue": "kalshi", "base_url": urls["kalshi"],
                 "api_key_id": (keys / "kalshi-key-id").read_text().strip(),
                 "private_key_file": str(keys / "kalshi-private.pem"), "poll_interval_s": 0.25},
                {"name": "zll-e2e", "venue": "zll", "base_url": urls["zll"],
                 "api_key_file": str(keys / "zll-api-key"), "subaccount_index": 0, "poll_interval_s": 0.25},
            ],
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        procs["publisher"] = Proc("publisher", [*cli, "run", "--config", str(tmp_path / "config.yaml")], tmp_path, env)
        metrics_url = f"http://127.0.0.1:{http_port}"

        def ready() -> bool:
            with urllib.request.urlopen(f"{metrics_url}/readyz", timeout=2) as r:
                return r.status == 200

        wait_for("fill-publisher /readyz", ready, 60, procs)

        # Prometheus: the compose stack's config, re-targeted, with the e2e copy of the rules
        prom_cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
        prom_cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
        rules = e2e_rules(tmp_path)
        prom_cfg["rule_files"] = [str(rules)]
        prom_port = free_port()
        for job in prom_cfg["scrape_configs"]:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{http_port}" if job["job_name"] == "fill-publisher"
                                                  else f"127.0.0.1:{prom_port}"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        procs["prometheus"] = Proc("prometheus", [
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
        ], tmp_path, env)
        yield {"procs": procs, "prom": f"http://127.0.0.1:{prom_port}", "metrics": metrics_url,
               "kalshi_root": urllib.parse.urljoin(urls["kalshi"], "/"), "tmp": tmp_path}
    finally:
        for name in ("prometheus", "publisher", "kalshi", "zll", "broker"):
            if name in procs:
                procs[name].stop()


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    answer = http_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def alerts(prom: str, name: str, state: str = "firing") -> list[dict[str, str]]:
    answer = http_json(f"{prom}/api/v1/alerts")
    return [a["labels"] for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]


def test_prometheus_scrapes_the_publisher_and_a_venue_fault_fires_the_alert(stack: dict[str, Any]) -> None:
    prom, procs = stack["prom"], stack["procs"]

    # 1. scraped: the target is up and the contract's metrics are there with venue/source labels
    wait_for("the fill-publisher target up in Prometheus",
             lambda: [r for r in query(prom, 'up{job="fill-publisher"} == 1')], 60, procs)
    wait_for("fills published, as Prometheus sees them",
             lambda: len(query(prom, 'fillpub_fills_published_total{job="fill-publisher"} > 0')) == 2, 60, procs)
    names = {r["metric"]["__name__"] for r in query(prom, '{job="fill-publisher", __name__=~"fillpub_.+"}')}
    always = {"fillpub_fills_published_total", "fillpub_poll_requests_total", "fillpub_last_success_timestamp_seconds",
              "fillpub_fill_lag_seconds_bucket", "fillpub_poll_duration_seconds_bucket",
              "fillpub_commit_duration_seconds_bucket", "fillpub_pending_fills"}
    assert always <= names, always - names
    assert {n for n in names if not n.endswith("_created")} <= ds.KNOWN_SERIES, names - ds.KNOWN_SERIES
    sources = {(r["metric"]["venue"], r["metric"]["source"]) for r in query(prom, "fillpub_poll_requests_total")}
    assert sources == {("kalshi", "kalshi-e2e"), ("zll", "zll-e2e")}

    # 2. quiet while healthy: once both sources have a request rate, wait for a rule evaluation
    #    that started after that moment, then the error-ratio alert is neither firing nor pending
    wait_for("request rates of both sources",
             lambda: len(query(prom, "rate(fillpub_poll_requests_total[5m]) > 0")) == 2, 30, procs)
    seen_at = time.time()

    def evaluated_since() -> bool:
        group = http_json(f"{prom}/api/v1/rules")["data"]["groups"][0]
        stamp = group["lastEvaluation"]  # RFC 3339 in UTC, e.g. 2026-01-02T03:04:05.123456789Z
        assert stamp.endswith("Z"), stamp
        whole, _, frac = stamp[:-1].partition(".")
        evaluated = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
        return evaluated > seen_at

    wait_for("a rule evaluation with the healthy data", evaluated_since, 30, procs)
    assert alerts(prom, "FillPublisherPollErrorRatioHigh", "firing") == []
    assert alerts(prom, "FillPublisherPollErrorRatioHigh", "pending") == []
    assert alerts(prom, "FillPublisherDown") == []

    # 3. fault: every Kalshi request answers 500
    http_json(f"{stack['kalshi_root']}_sim/faults", "POST", {"kind": "http_500", "probability": 1.0})
    firing = wait_for(
        "FillPublisherPollErrorRatioHigh firing for kalshi-e2e / http_5xx",
        lambda: [a for a in alerts(prom, "FillPublisherPollErrorRatioHigh")
                 if a.get("source") == "kalshi-e2e" and a.get("reason") == "http_5xx"],
        60, procs,
    )
    (alert,) = firing
    assert alert["severity"] == "warning" and alert["venue"] == "kalshi" and alert["job"] == "fill-publisher"
    # the healthy venue stays quiet
    assert [a for a in alerts(prom, "FillPublisherPollErrorRatioHigh") if a.get("source") == "zll-e2e"] == []
    # the publisher itself stays up and ready through a venue fault
    assert alerts(prom, "FillPublisherDown") == []
    with urllib.request.urlopen(f"{stack['metrics']}/readyz", timeout=2) as r:
        assert r.status == 200

    # 4. and clears when the venue recovers
    http_json(f"{stack['kalshi_root']}_sim/faults", "DELETE")
    wait_for("kalshi-e2e polling successfully again",
             lambda: query(prom, 'time() - fillpub_last_success_timestamp_seconds{source="kalshi-e2e"} < 3'), 30, procs)
