"""`fill-publisher audit` end to end: simulators over real HTTP, the publisher as a child process,
a Kafka-protocol broker, and the audit as a child process of its own.

Fills are dated well inside the audit window (older than the poll interval plus the settle
margin the audit leaves out), so the findings do not depend on timing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from publisher.audit import SETTLE_MARGIN_S
from publisher.embedded_broker import EmbeddedBroker
from publisher.event import FillEvent
from tests.harness.delivery import fill_id_header
from tests.harness.stack import Stack

pytestmark = pytest.mark.integration

SETTINGS = {"poll_interval_s": 0.25, "lookback_s": 120, "page_limit": 20, "max_requests_per_s": 200, "timeout_s": 5}
#: how old the test's fills are: inside the window, clear of the settle margin
AGE_S = SETTLE_MARGIN_S + 15


async def audit(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `fill-publisher audit --json` as a child; (exit status, the JSON document)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", "audit", "--config", str(config), "--json", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, json.loads(out)


async def started(stack: Stack, n: int) -> tuple[Any, list[str]]:
    """A ZLL source with `n` fills, published; (publisher process, fill ids)."""
    sim = await stack.zll("zll-audit", **SETTINGS)
    ids = [f.fill_id for f in sim.add_fills(n, late_s=AGE_S)]
    publisher = stack.publisher().start()
    await publisher.wait_ready()
    records = await stack.wait_for_fills(ids)
    assert set(ids) <= {fill_id_header(r) for r in records}
    return publisher, ids


async def test_clean_run_then_fills_added_while_the_publisher_is_down(broker: EmbeddedBroker, topic_prefix: str,
                                                                     tmp_path: Path) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    try:
        publisher, _ = await started(stack, 30)
        code, report = await audit(stack.write_config())
        [source] = report["sources"]
        assert (code, source) == (0, {"source": "zll-audit", "venue": "zll", "venue_fills": 30, "published": 30,
                                      "missing": [], "duplicated": [], "mismatched": []})
        assert (await publisher.terminate())[0] == 0
        sim = stack.sources[0].sim
        added = sorted(f.fill_id for f in sim.add_fills(4, late_s=AGE_S - 1))
        code, report = await audit(stack.write_config())
        [source] = report["sources"]
        assert code == 1
        assert sorted(source["missing"]) == added
        assert (source["venue_fills"], source["published"], source["duplicated"], source["mismatched"]) == (
            34, 30, [], [])
        # the publisher catches up on restart, and the audit says so
        publisher = stack.publisher().start()
        await publisher.wait_ready()
        await stack.wait_for_fills(added)
        code, report = await audit(stack.write_config(), "--source", "zll-audit")
        assert (code, report["sources"][0]["missing"]) == (0, [])
        assert (await publisher.terminate())[0] == 0
    finally:
        await stack.close()


async def test_duplicated_and_mismatched_records(broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    try:
        publisher, ids = await started(stack, 10)
        assert (await publisher.terminate())[0] == 0
        records = {fill_id_header(r): r for r in await stack.records("zll")}
        twice, wrong = records[ids[2]], records[ids[5]]
        event = msgspec.json.decode(wrong.value, type=FillEvent)  # type: ignore[arg-type]
        bad_price = msgspec.json.encode(msgspec.structs.replace(event, price=event.price + "1"))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(stack.topics["zll"], twice.value, key=twice.key,
                                         headers=[(k, v) for k, v in twice.headers])
            await producer.send_and_wait(stack.topics["zll"], bad_price, key=wrong.key,
                                         headers=[(k, v) for k, v in wrong.headers])
        finally:
            await producer.stop()
        code, report = await audit(stack.write_config())
        [source] = report["sources"]
        assert code == 1
        assert source["missing"] == []
        assert source["duplicated"] == sorted([ids[2], ids[5]])  # the wrong copy is a second record too
        assert source["mismatched"] == [ids[5]]
        assert (source["venue_fills"], source["published"]) == (10, 10)
    finally:
        await stack.close()


def test_table_and_exit_status_for_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kafka: {}\nsources: []\n")
    proc = subprocess.run([sys.executable, "-m", "publisher", "audit", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "bootstrap_servers" in proc.stderr


def test_kafka_clients_take_the_services_tls_settings_with_the_key_password(tmp_path: Path) -> None:
    """The audit reaches a cluster the publisher reaches: an encrypted client key opens with its
    password (without it, loading the key fails, or OpenSSL asks a terminal a CronJob lacks)."""
    import ssl

    from publisher.audit import kafka_options
    from tests.harness.tls import Pki
    from tests.test_config import base_config, load
    from tests.test_kafka_settings import _encrypted_client_key

    pki = Pki(tmp_path)
    password = "audit-key-Pa55-9f2e"
    (tmp_path / "key-password").write_text(password + "\n")
    cfg = base_config(tmp_path)
    cfg["kafka"].update(security_protocol="SSL", ssl_cafile=pki.cafile, ssl_certfile=pki.client_cert,
                        ssl_keyfile=_encrypted_client_key(pki, tmp_path, password),
                        ssl_key_password_file=str(tmp_path / "key-password"), client_id="fp")
    options = kafka_options(load(tmp_path, cfg))
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["security_protocol"] == "SSL" and options["client_id"] == "fp-audit"
