"""Config inputs that must not wedge or crash `check-config`/`run`: FIFOs and devices as config,
secret or CA files, files too large to be what they claim, YAML merge keys with overrides, and
numbers too small or too large to be settings (each refused naming the field, exit 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from publisher.config import MAX_SECRET_BYTES
from publisher.venues.base import RESPONSE_BYTES_PER_FILL, RESPONSE_ENVELOPE_BYTES
from tests.test_cli import assert_config_error, cli
from tests.test_config import base_config, config_error, kalshi, load, write_config, zll


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


def test_a_fifo_as_secret_or_ca_file_is_refused_at_once(tmp_path: Path, cfg: dict[str, Any]) -> None:
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)  # nobody ever writes to it: opening it the ordinary way blocks forever
    zll(cfg)["api_key_file"] = str(fifo)
    started = time.monotonic()
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[zll-main].api_key_file" and "it is a FIFO, not a regular file" in error.problem
    cfg = base_config(tmp_path)
    cfg["kafka"].update(security_protocol="SSL", ssl_cafile=str(fifo))
    error = config_error(tmp_path, cfg)
    assert error.field == "kafka.ssl_cafile" and "FIFO" in error.problem
    assert time.monotonic() - started < 2


def test_dev_zero_as_config_or_secret_exits_2(tmp_path: Path, cfg: dict[str, Any]) -> None:
    line = assert_config_error(cli("check-config", "--config", "/dev/zero"), "config")
    assert "character device" in line
    kalshi(cfg)["private_key_file"] = "/dev/zero"
    line = assert_config_error(cli("check-config", "--config", str(write_config(tmp_path, cfg))),
                               "sources[kalshi-main].private_key_file")
    assert "character device" in line


def test_an_oversized_secret_file_is_refused(tmp_path: Path, cfg: dict[str, Any]) -> None:
    huge = tmp_path / "huge.key"
    huge.write_bytes(b"k" * (MAX_SECRET_BYTES + 1))
    zll(cfg)["api_key_file"] = str(huge)
    error = config_error(tmp_path, cfg)
    assert error.field == "sources[zll-main].api_key_file" and f"larger than {MAX_SECRET_BYTES} bytes" in error.problem


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path, cfg: dict[str, Any]) -> None:
    text = f"""
kafka: {{bootstrap_servers: "k:9092"}}
sources:
  - &zll
    name: zll-a
    venue: zll
    base_url: https://staging.zerolatencylabs.com
    api_key_file: {cfg["sources"][1]["api_key_file"]}
    subaccount_index: 0
    page_limit: 100
  - <<: *zll
    name: zll-b
    page_limit: 500
    subaccount_index: 1
"""
    sources = {s.name: s for s in load(tmp_path, text).config.sources}
    assert (sources["zll-a"].page_limit, sources["zll-a"].subaccount_index) == (100, 0)  # type: ignore[attr-defined]
    assert (sources["zll-b"].page_limit, sources["zll-b"].subaccount_index) == (500, 1)  # type: ignore[attr-defined]
    assert sources["zll-b"].base_url == "https://staging.zerolatencylabs.com"  # merged in
    # a key given twice in the mapping itself is still a mistake
    error = config_error(tmp_path, text.replace("    name: zll-b\n", "    name: zll-b\n    name: zll-c\n"))
    assert "duplicate key 'name'" in error.problem


@pytest.mark.parametrize(("section", "field", "value"), [
    ("source", "max_requests_per_s", 1e-300),
    ("source", "max_requests_per_s", 1e9),
    ("source", "poll_interval_s", 1e-300),
    ("source", "timeout_s", 1e-300),
    ("source", "max_response_bytes", 10),
    ("source", "max_response_bytes", 1 << 40),
    ("kafka", "topic_partitions", 10**12),
    ("kafka", "max_pending_fills", 10**29),
    ("kafka", "max_batch_fills", 10**12),
    ("kafka", "replication_factor", 10**6),
])
def test_numbers_beyond_sane_bounds_are_refused(tmp_path: Path, cfg: dict[str, Any], section: str, field: str,
                                                value: float) -> None:
    (kalshi(cfg) if section == "source" else cfg["kafka"])[field] = value
    error = config_error(tmp_path, cfg)
    expected = f"sources[kalshi-main].{field}" if section == "source" else f"kafka.{field}"
    assert error.field == expected, error


def test_max_response_bytes_defaults_to_room_for_a_page(tmp_path: Path, cfg: dict[str, Any]) -> None:
    kalshi(cfg)["page_limit"] = 1000
    zll(cfg)["max_response_bytes"] = 123_456
    sources = {s.name: s for s in load(tmp_path, cfg).config.sources}
    assert sources["kalshi-main"].response_limit == 1000 * RESPONSE_BYTES_PER_FILL + RESPONSE_ENVELOPE_BYTES
    assert sources["zll-main"].response_limit == 123_456
