"""The command line as operators use it (subprocesses), and the log line format and redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_config import ZLL_KEY, base_config, kalshi_pem, write_config

from publisher import logs

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m publisher ARGS` with no FILLPUB_* variables of the caller leaking in."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args], capture_output=True, text=True, env=environ, timeout=20
    )


def assert_config_error(result: subprocess.CompletedProcess[str], field: str) -> str:
    """Exit 2, exactly one stderr line naming `field`, no traceback; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fill-publisher: config error: {field}: "), lines[0]
    return lines[0]


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


def test_check_config_ok_prints_summary_without_secrets(tmp_path: Path, cfg: dict[str, Any]) -> None:
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "config OK" in out
    assert "kalshi-main: venue=kalshi base_url=https://external-api.kalshi.com/trade-api/v2" in out
    assert "zll-main: venue=zll base_url=https://staging.zerolatencylabs.com" in out
    assert "kafka-0:9092,kafka-1:9092" in out
    everything = out + result.stderr
    assert ZLL_KEY not in everything
    assert not any(line in everything for line in kalshi_pem().splitlines()[1:-1])


def test_bad_config_exits_2_with_one_line(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["sources"][0]["page_limit"] = 0
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)))
    assert_config_error(result, "sources[kalshi-main].page_limit")


def test_run_with_bad_config_exits_2_before_starting(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del cfg["kafka"]["bootstrap_servers"]
    result = cli("run", "--config", str(write_config(tmp_path, cfg)))
    assert_config_error(result, "kafka.bootstrap_servers")


def test_env_override_error_exits_2(tmp_path: Path, cfg: dict[str, Any]) -> None:
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)), env={"FILLPUB_HTTP__PORT": "abc"})
    line = assert_config_error(result, "http.port")
    assert "FILLPUB_HTTP__PORT" in line


def test_missing_config_file(tmp_path: Path) -> None:
    assert_config_error(cli("check-config", "--config", str(tmp_path / "nope.yaml")), "config")


def test_invalid_kalshi_key_file_is_never_printed(tmp_path: Path, cfg: dict[str, Any]) -> None:
    # readable, but not a usable key: the adapter's check_secret refuses it
    (tmp_path / "kalshi.pem").write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRET-123\n-----END PRIVATE KEY-----\n")
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)))
    assert_config_error(result, "sources[kalshi-main].private_key_file")
    assert "SUPERSECRET-123" not in result.stdout + result.stderr


def test_invalid_kalshi_key_env_is_never_printed(tmp_path: Path, cfg: dict[str, Any]) -> None:
    del cfg["sources"][0]["private_key_file"]
    cfg["sources"][0]["private_key_env"] = "KALSHI_PEM"
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)), env={"KALSHI_PEM": "SUPERSECRET-123"})
    assert_config_error(result, "sources[kalshi-main].private_key_env")
    assert "SUPERSECRET-123" not in result.stdout + result.stderr


def test_unreadable_secret_file(tmp_path: Path, cfg: dict[str, Any]) -> None:
    cfg["sources"][1]["api_key_file"] = str(tmp_path / "missing.key")
    line = assert_config_error(cli("check-config", "--config", str(write_config(tmp_path, cfg))),
                               "sources[zll-main].api_key_file")
    assert "No such file or directory" in line


def test_bad_log_level_exits_2(tmp_path: Path, cfg: dict[str, Any]) -> None:
    result = cli("check-config", "--config", str(write_config(tmp_path, cfg)), env={"FILLPUB_LOG_LEVEL": "loud"})
    assert_config_error(result, "FILLPUB_LOG_LEVEL")


def test_usage_errors_exit_2() -> None:
    assert cli().returncode == 2
    assert cli("run").returncode == 2  # --config is required
    assert cli("demo", "--duration", "-1").returncode == 2


def test_schema_prints_the_committed_schema() -> None:
    result = cli("schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["$id"].endswith("fill.v1.json")
    assert result.stdout == (REPO / "schemas" / "fill.v1.json").read_text()


# --- logging ------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    names = ["", "aiokafka", "kafka", "httpx", "httpcore"]
    saved = [(logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture
def log_stream(restore_logging: None) -> io.StringIO:
    stream = io.StringIO()
    logs.configure_logging("DEBUG", stream=stream)
    return stream


def test_log_line_format(log_stream: io.StringIO) -> None:
    logging.getLogger("publisher.test").info("polled %d fills", 3, extra={"source": "kalshi-main", "note": "a b"})
    line = log_stream.getvalue()
    assert line.count("\n") == 1
    ts, level, logger, rest = line.rstrip("\n").split(" ", 3)
    assert ts.endswith("Z") and "T" in ts
    assert (level, logger) == ("INFO", "publisher.test")
    assert rest == 'polled 3 fills source=kalshi-main note="a b"'


def test_exception_is_one_line(log_stream: io.StringIO) -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("outer\nsecond line") from exc
    except RuntimeError:
        logging.getLogger("publisher.test").exception("poll failed")
    line = log_stream.getvalue()
    assert line.count("\n") == 1
    assert 'exc="RuntimeError: outer\\nsecond line"' in line
    assert "cause=\"KeyError: 'inner'\"" in line
    assert "test_cli.py:" in line


def test_registered_secrets_are_masked(log_stream: io.StringIO) -> None:
    pem = kalshi_pem()
    logs.register_secret("zll-SUPERSECRET-777")
    logs.register_secret(pem)
    log = logging.getLogger("publisher.test")
    log.warning("key is %s", "zll-SUPERSECRET-777", extra={"header": "Bearer zll-SUPERSECRET-777"})
    log.error("pem line %s", pem.splitlines()[2])
    try:
        raise ValueError(f"bad key {pem}")
    except ValueError:
        log.exception("failed")
    text = log_stream.getvalue()
    assert "SUPERSECRET" not in text
    assert not any(line in text for line in pem.splitlines()[1:-1])
    assert text.count("***") >= 4


def test_short_values_are_not_registered(log_stream: io.StringIO) -> None:
    logs.register_secret("ab")
    logging.getLogger("publisher.test").info("ab cd")
    assert log_stream.getvalue().rstrip().endswith("ab cd")


def test_level_from_environment(restore_logging: None) -> None:
    logs.configure_logging(stream=io.StringIO(), environ={"FILLPUB_LOG_LEVEL": "warning"})
    assert logging.getLogger().level == logging.WARNING
    with pytest.raises(ValueError, match="FILLPUB_LOG_LEVEL"):
        logs.configure_logging(environ={"FILLPUB_LOG_LEVEL": "loud"})
