"""The operator commands against the simulators and the mock broker, and the logs on-call reads.

- `--version`, `run --help` (environment overrides, exit codes);
- `check-config --connect`: ok against live simulators and broker (publishing nothing), and the
  cause on the failing line with exit 1 (rejected key, Kafka away), exit 2 for a config error;
- `status` (text and `--json`) after a real `fill-publisher run` committed checkpoints, that run
  using zstd compression and a producer pass-through option, logging JSON;
- `FILLPUB_LOG_FORMAT=json`: every line one object with ts/level/logger/message, `source` on lines
  about one source, secrets masked; with Kafka away, one line per retry and no aiokafka ERROR lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from publisher import __version__
from tests.harness.stack import Stack, free_port, wait_until

pytestmark = pytest.mark.integration

FAST = {"poll_interval_s": 0.3, "lookback_s": 30, "page_limit": 50, "max_requests_per_s": 100, "timeout_s": 3}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "publisher", *args], capture_output=True, text=True,
                          env=environ, timeout=timeout)


async def acli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`cli` off the event loop, so the simulators in this loop keep answering."""
    return await asyncio.to_thread(cli, *args, env=env)


@pytest.fixture
async def stack(broker: Any, topic_prefix: str, tmp_path: Path) -> Any:
    s = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    yield s
    await s.close()


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"fill-publisher {__version__}\n"
    from importlib.metadata import version

    assert __version__ == version("fill-publisher")


def test_run_help_lists_environment_and_exit_codes() -> None:
    out = cli("run", "--help").stdout
    for needle in ("FILLPUB_<SECTION>__<KEY>", "FILLPUB_SOURCES__<NAME>__<KEY>", "FILLPUB_LOG_LEVEL",
                   "FILLPUB_LOG_FORMAT", "HTTPS_PROXY"):
        assert needle in out, needle
    codes = dict(re.findall(r"^\s+([023])\s+(\S.*)$", out, re.M))
    assert set(codes) == {"0", "2", "3"}
    assert "fenced" in codes["3"] and "config" in codes["2"]


async def test_check_config_connect(stack: Stack, tmp_path: Path) -> None:
    kalshi = await stack.kalshi("kalshi-a", **FAST)
    await stack.zll("zll-a", **FAST)
    kalshi.add_fills(3, late_s=5)
    config = stack.write_config()
    result = await acli("check-config", "--config", str(config), "--connect")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checks = [line.strip() for line in lines[lines.index("connecting (nothing is published):") + 1:]]
    assert len(checks) == 3, checks
    assert checks[0].startswith("source kalshi-a (kalshi ") and ": ok (" in checks[0]
    assert checks[1].startswith("source zll-a (zll ") and ": ok (" in checks[1]
    assert checks[2].startswith(f"kafka {stack.bootstrap}: ok (3 brokers;")
    assert kalshi.requests >= 1
    # nothing published: the fills topics were not even created
    assert await stack.records("kalshi", "zll", "dlq", "checkpoint") == []

    # the venue rejects the key: that source's line says why, exit 1
    kalshi.faults.set("auth", 1.0)
    result = await acli("check-config", "--config", str(config), "--connect")
    kalshi.faults.clear()
    assert result.returncode == 1, result.stdout + result.stderr
    (bad,) = [line for line in result.stdout.splitlines() if "kalshi-a" in line and "source" in line]
    assert "auth" in bad and ": ok" not in bad
    assert [line for line in result.stdout.splitlines() if "zll-a" in line and ": ok (" in line]

    # Kafka away: its line names the failure, exit 1; a config error is still exit 2
    dead = f"127.0.0.1:{free_port()}"
    result = await acli("check-config", "--config", str(config), "--connect",
                        env={"FILLPUB_KAFKA__BOOTSTRAP_SERVERS": dead, "FILLPUB_KAFKA__REQUEST_TIMEOUT_S": "3"})
    assert result.returncode == 1
    (kafka_line,) = [line for line in result.stdout.splitlines() if line.strip().startswith("kafka ")]
    assert dead in kafka_line and ": ok" not in kafka_line and "Error" in kafka_line
    result = await acli("check-config", "--config", str(config), "--connect", env={"FILLPUB_HTTP__PORT": "x"})
    assert result.returncode == 2 and "http.port" in result.stderr


async def test_status_after_a_run_with_json_logs_and_compression(broker: Any, stack: Stack) -> None:
    kalshi = await stack.kalshi("kalshi-a", **FAST)
    zll = await stack.zll("zll-a", **FAST)
    config = stack.write_config(compression_type="zstd", producer_options={"linger_ms": 2})
    kalshi.add_fills(4, late_s=3)
    zll.add_fills(4, late_s=3)
    # before any run: every source listed, none has a checkpoint
    before = await acli("status", "--config", str(config), "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == [
        {"source": name, "shard": 0, "watermark": None, "window_fills": None, "written_at": None}
        for name in ("kalshi-a", "zll-a")]
    before = await acli("status", "--config", str(config))
    assert [line.split()[0] for line in before.stdout.splitlines()[1:]] == ["kalshi-a", "zll-a"]
    assert all(line.endswith("(no checkpoint yet)") for line in before.stdout.splitlines()[1:])

    started_ns = time.time_ns()
    proc = stack.publisher(compression_type="zstd", producer_options={"linger_ms": 2})
    proc.env = {"FILLPUB_LOG_FORMAT": "json"}
    proc.start()
    try:
        await proc.wait_ready()
        expected = [f.fill_id for f in kalshi.fills] + [f.fill_id for f in zll.fills]
        records = await stack.wait_for_fills(expected)
        assert len(records) == 8
        await asyncio.sleep(1.0)  # a few more polls: checkpoints of every source written
    finally:
        code, _ = await proc.terminate()
    assert code == 0, proc.log_tail()

    result = await acli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)
    assert [s["source"] for s in statuses] == ["kalshi-a", "zll-a"]
    for s in statuses:
        assert set(s) == {"source", "shard", "watermark", "window_fills", "written_at"}
        assert s["shard"] == 0
        assert RFC3339.match(s["watermark"]) and RFC3339.match(s["written_at"]), statuses
        watermark = dt.datetime.strptime(s["watermark"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert watermark.timestamp() * 1e9 >= started_ns - 2e9
    assert [s["window_fills"] for s in statuses] == [4, 4]
    text = await acli("status", "--config", str(config))
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["SOURCE", "SHARD", "WATERMARK", "WINDOW_FILLS", "WRITTEN_AT"]
    assert [line.split()[0] for line in lines[1:]] == ["kalshi-a", "zll-a"]
    assert lines[1].split()[2] == statuses[0]["watermark"]

    # the run's log: one JSON object per line, source on the lines about one source
    objects = [json.loads(line) for line in proc.logs().splitlines() if line.strip()]
    assert objects
    for obj in objects:
        assert {"ts", "level", "logger", "message"} <= set(obj), obj
        assert RFC3339.match(obj["ts"]), obj
    first_start = [o for o in objects if "no checkpoint in" in o["message"]]
    assert {o["source"] for o in first_start} == {"kalshi-a", "zll-a"}
    for secret in stack.secrets():
        for line in secret.splitlines():
            assert line.startswith("-----") or line not in proc.logs()


async def test_kafka_away_logs_one_json_line_per_retry(stack: Stack, tmp_path: Path) -> None:
    await stack.zll("zll-a", **FAST)
    stack.bootstrap = f"127.0.0.1:{free_port()}"
    proc = stack.publisher(request_timeout_s=2)
    proc.env = {"FILLPUB_LOG_FORMAT": "json"}
    proc.start()
    try:
        await wait_until(lambda: proc.logs().count("kafka not reachable") >= 3, "three retries", 40)
    finally:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        code, _ = await proc.terminate()
    assert code == 0
    objects = [json.loads(line) for line in proc.logs().splitlines() if line.strip()]
    retries = [o for o in objects if "kafka not reachable" in o["message"]]
    assert len(retries) >= 3
    # nothing from aiokafka's own loggers: our line per retry is the only one
    assert [o for o in objects if o["logger"].startswith(("aiokafka", "kafka"))] == []
    errors = [o for o in objects if o["level"] in ("ERROR", "CRITICAL")]
    assert errors == [], errors
