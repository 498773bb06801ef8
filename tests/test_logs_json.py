"""`FILLPUB_LOG_FORMAT=json`: one JSON object per line, `source` on lines about one source, secrets
masked; aiokafka's own records quiet outside DEBUG. (A running publisher's JSON log is checked in
tests/test_ops_cli.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_config_error, cli, restore_logging  # noqa: F401 - restore_logging is a fixture
from test_config import base_config, write_config

from publisher import logs


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> io.StringIO:
    request.getfixturevalue("restore_logging")
    out = io.StringIO()
    logs.configure_logging("INFO", stream=out, environ={"FILLPUB_LOG_FORMAT": "json"})
    return out


def test_one_object_per_line_with_the_contract_keys(stream: io.StringIO) -> None:
    logging.getLogger("publisher.test").warning("polled %d fills\nsecond line", 3, extra={"note": "a b", "n": 2})
    (obj,) = json_lines(stream)
    assert obj["level"] == "WARNING" and obj["logger"] == "publisher.test"
    assert obj["message"] == "polled 3 fills\nsecond line"
    assert obj["ts"].endswith("Z") and "T" in obj["ts"]
    assert obj["note"] == "a b" and obj["n"] == 2
    assert "source" not in obj


def test_source_from_extra_and_from_the_task(stream: io.StringIO) -> None:
    log = logging.getLogger("publisher.test")
    log.info("restored", extra={"source": "kalshi-main"})

    async def poller(name: str) -> None:
        logs.bind_source(name)
        await asyncio.sleep(0)
        log.warning("source %s: poll failed", name)

    async def main() -> None:
        await asyncio.gather(poller("zll-a"), poller("zll-b"))
        log.info("not about a source")

    asyncio.run(main())
    objs = json_lines(stream)
    assert [o.get("source") for o in objs] == ["kalshi-main", "zll-a", "zll-b", None]
    assert objs[1]["message"] == "source zll-a: poll failed"


def test_secrets_masked_even_where_json_would_escape_them(stream: io.StringIO) -> None:
    secret = 'pa"ss\\word-SUPERSECRET-91'
    logs.register_secret(secret)
    log = logging.getLogger("publisher.test")
    log.error("key %s", secret, extra={"header": f"Bearer {secret}"})
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert "SUPERSECRET" not in text
    first, second = json_lines(stream)
    assert first["message"] == "key ***" and first["header"] == "Bearer ***"
    assert second["exc"] == "ValueError: bad ***" and "test_logs_json.py:" in second["at"]


@pytest.mark.usefixtures("restore_logging")
def test_text_format_does_not_repeat_the_source() -> None:
    out = io.StringIO()
    logs.configure_logging("INFO", stream=out, environ={})
    logging.getLogger("publisher.app").warning("source %s: no checkpoint", "k", extra={"source": "k"})
    assert out.getvalue().rstrip().endswith("publisher.app source k: no checkpoint")


@pytest.mark.usefixtures("restore_logging")
def test_aiokafka_records_only_at_debug() -> None:
    out = io.StringIO()
    logs.configure_logging("INFO", stream=out, environ={"FILLPUB_LOG_FORMAT": "json"})
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1")
    logging.getLogger("publisher.sink").warning("kafka not reachable")
    assert [o["logger"] for o in json_lines(out)] == ["publisher.sink"]
    logs.configure_logging("DEBUG", stream=out, environ={"FILLPUB_LOG_FORMAT": "json"})
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1")
    assert json_lines(out)[-1]["logger"] == "aiokafka.conn"


def test_unknown_log_format_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, base_config(tmp_path))
    result = cli("check-config", "--config", str(config), env={"FILLPUB_LOG_FORMAT": "xml"})
    assert_config_error(result, "FILLPUB_LOG_FORMAT")
