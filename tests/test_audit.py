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


# -- the Kafka read: sought by time, not the whole topic (a fake consumer records what is read) ---


class FakeTopic:
    """A fills topic's partitions as the audit's consumer and admin client see them: records
    (offset, timestamp ms, key, value), offsets looked up by time, and what was fetched."""

    def __init__(self, partitions: dict[int, list[tuple[int, bytes, bytes]]], by_time: bool = True):
        from aiokafka import TopicPartition

        self.tp = {p: TopicPartition("fills.zll", p) for p in partitions}
        self.records = {self.tp[p]: records for p, records in partitions.items()}
        self.by_time = by_time
        self.positions: dict[Any, int] = {}
        self.fetched: list[tuple[int, int]] = []  # (partition, offset) of every record handed out

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": topics[0], "error_code": 0, "partitions": [{"partition": p} for p in self.tp]}]

    def assign(self, partitions: list[Any]) -> None:
        self.positions = {tp: 0 for tp in partitions}

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return {tp: len(self.records[tp]) for tp in partitions}

    async def offsets_for_times(self, times: dict[Any, int]) -> dict[Any, Any]:
        from aiokafka.structs import OffsetAndTimestamp

        if not self.by_time:
            return dict.fromkeys(times)  # librdkafka's mock: "none" for every time
        found = {}
        for tp, ms in times.items():
            offset = next((i for i, (stamp, _key, _value) in enumerate(self.records[tp]) if stamp >= ms), None)
            found[tp] = None if offset is None else OffsetAndTimestamp(offset, self.records[tp][offset][1])
        return found

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, tp: Any) -> None:
        self.positions[tp] = 0

    async def position(self, tp: Any) -> int:
        return self.positions[tp]

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        from aiokafka.structs import ConsumerRecord

        out = {}
        for tp in partitions:
            start = self.positions[tp]
            chunk = self.records[tp][start:start + 10]
            if chunk:
                out[tp] = [ConsumerRecord(tp.topic, tp.partition, start + i, stamp, 0, key, value, None, 0, 0, [])
                           for i, (stamp, key, value) in enumerate(chunk)]
                self.fetched += [(tp.partition, start + i) for i in range(len(chunk))]
                self.positions[tp] = start + len(chunk)
        return out


def fake_records(n: int, start_ms: int, source: str = "zll-audit") -> list[tuple[int, bytes, bytes]]:
    from tests.test_consumer import fill

    out = []
    for i in range(n):
        event = msgspec.structs.replace(fill(i), venue="zll", source=source, fill_id=f"z{start_ms + i}")
        out.append((start_ms + i * 1000, f"{source}:KX-1".encode(), msgspec.json.encode(event)))
    return out


async def test_the_kafka_read_seeks_by_time_and_reads_only_from_there() -> None:
    from publisher.audit import _PROBE_OFFSETS, kafka_records

    base = 1_790_000_000_000
    topic = FakeTopic({0: fake_records(500, base), 1: fake_records(300, base + 5), 2: fake_records(40, base - 900_000)})
    from_ms = base + 450 * 1000  # the last 50 seconds of partition 0; nothing of 1 and 2 is that new
    events = await kafka_records(topic, topic, "fills.zll", "zll-audit", from_ms * 1_000_000)  # type: ignore[arg-type]
    assert {e.fill_id for e in events} == {f"z{base + i}" for i in range(450, 500)}
    assert sorted(o for p, o in topic.fetched if p == 0) == list(range(450, 500))  # not a record more
    # the others hold nothing that new: at most their last records are looked at, to be sure
    assert all(o >= end - _PROBE_OFFSETS for p, o in topic.fetched for q, end in ((1, 300), (2, 40)) if p == q)


async def test_a_broker_without_time_lookups_is_read_from_the_start_where_needed(caplog: pytest.LogCaptureFixture) -> None:
    """Partition 0's newest records lie beyond the first fetch of the probe (10 records a fetch
    here): the probe reads to the end before it decides."""
    from publisher.audit import _PROBE_OFFSETS, kafka_records

    base = 1_790_000_000_000
    topic = FakeTopic({0: fake_records(100, base), 1: fake_records(30, base - 900_000)}, by_time=False)
    events = await kafka_records(topic, topic, "fills.zll", "zll-audit", (base + 95 * 1000) * 1_000_000)  # type: ignore[arg-type]
    # partition 0's newest records pass the seek time: read from its start (its older ones are
    # kept too: the comparison, not the read, decides what belongs to the window)
    assert {e.fill_id for e in events} == {f"z{base + i}" for i in range(100)}
    assert "reading the partition from the start" in caplog.text
    # partition 1 holds nothing that new: only its last records were looked at
    assert {offset for p, offset in topic.fetched if p == 1} == set(range(max(0, 30 - _PROBE_OFFSETS), 30))
