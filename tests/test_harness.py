"""Tests of the test harness itself: the embedded broker, the delivery verifier and the proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from publisher.embedded_broker import EmbeddedBroker
from tests.harness.broker import TopicSpec, ensure_topics
from tests.harness.delivery import (
    ABORTED,
    COMMITTED,
    OPEN,
    LogRecord,
    assert_exactly_once,
    committed,
    delivery_report,
    not_aborted,
    read_log,
)
from tests.harness.proxy import KafkaProxy

pytestmark = pytest.mark.integration


def _fill(i: str) -> dict[str, object]:
    return {"value": f"v-{i}".encode(), "key": f"k-{i}".encode(),
            "headers": [("fill_id", i.encode())]}


# -- embedded broker -----------------------------------------------------------------------------

def test_embedded_broker_lifecycle(fresh_broker: EmbeddedBroker) -> None:
    hosts = fresh_broker.bootstrap_servers.split(",")
    assert len(hosts) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    assert fresh_broker.create_topic("lifecycle", 2) is True
    assert fresh_broker.create_topic("lifecycle", 2) is False

    fresh_broker.pause()
    assert fresh_broker.running
    fresh_broker.resume()

    fresh_broker.kill()
    assert not fresh_broker.running
    with pytest.raises(RuntimeError):
        fresh_broker.bootstrap_servers  # noqa: B018 - the property raises
    fresh_broker.start()
    assert fresh_broker.bootstrap_servers.split(",") != hosts
    # A restarted cluster is empty: the topic can be created again.
    assert fresh_broker.create_topic("lifecycle", 2) is True


def test_embedded_broker_dies_with_its_parent() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import time
            from publisher.embedded_broker import EmbeddedBroker
            b = EmbeddedBroker().start()
            print(b.pid, flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the broker child outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_module_prints_bootstrap() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "publisher.embedded_broker", "--brokers", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert len(line.split(",")) == 2 and all(":" in h for h in line.split(","))
    finally:
        proc.terminate()
        proc.wait(5)


# -- delivery verifier ---------------------------------------------------------------------------

_OPEN_TXN_CHILD = textwrap.dedent("""
    import asyncio, sys
    from aiokafka import AIOKafkaProducer

    async def main(bootstrap, topic, txn_id):
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
        await p.start()
        await p.begin_transaction()
        for i in ("open-1", "open-2"):
            await p.send_and_wait(topic, f"v-{i}".encode(), key=f"k-{i}".encode(),
                                  headers=[("fill_id", i.encode())])
        print("sent", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(*sys.argv[1:]))
""")


async def _leave_open_transaction(bootstrap: str, topic: str, txn_id: str) -> None:
    """Write two records in a transaction from a child process, then SIGKILL it mid-transaction."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPEN_TXN_CHILD, bootstrap, topic, txn_id,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert line.strip() == b"sent"


async def test_read_log_classifies_by_markers(broker: EmbeddedBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}fills"
    other = f"{topic_prefix}other"
    broker.create_topic(topic, 2)
    bs = broker.bootstrap_servers

    plain = AIOKafkaProducer(bootstrap_servers=bs)
    txn = AIOKafkaProducer(bootstrap_servers=bs, transactional_id=f"{topic_prefix}txn")
    await plain.start()
    await txn.start()
    try:
        for i in ("plain-1", "plain-2"):
            await plain.send_and_wait(topic, **_fill(i))

        async with txn.transaction():
            for i in ("c1-1", "c1-2", "c1-3"):
                await txn.send(topic, **_fill(i))
            await txn.send(other, **_fill("c1-other"))

        await txn.begin_transaction()
        for i in ("a-1", "a-2"):
            await txn.send_and_wait(topic, **_fill(i))
        await txn.abort_transaction()

        await _leave_open_transaction(bs, topic, f"{topic_prefix}dead")

        # Markers of another producer after the open transaction must not close it.
        async with txn.transaction():
            for i in ("c2-1", "c2-2"):
                await txn.send(topic, **_fill(i))
    finally:
        await txn.stop()
        await plain.stop()

    records = await read_log(bs, [topic, other, f"{topic_prefix}missing"])
    status = {r.header("fill_id").decode(): r.status for r in records}  # type: ignore[union-attr]
    assert status == {
        "plain-1": COMMITTED, "plain-2": COMMITTED,
        "c1-1": COMMITTED, "c1-2": COMMITTED, "c1-3": COMMITTED, "c1-other": COMMITTED,
        "a-1": ABORTED, "a-2": ABORTED,
        "open-1": OPEN, "open-2": OPEN,
        "c2-1": COMMITTED, "c2-2": COMMITTED,
    }
    assert {r.partition for r in records if r.topic == topic} <= {0, 1}
    by_id = {r.header("fill_id"): r for r in records}
    assert by_id[b"c1-1"].key == b"k-c1-1" and by_id[b"c1-1"].value == b"v-c1-1"
    assert by_id[b"c1-1"].timestamp_ms > 1_600_000_000_000
    assert by_id[b"open-1"].producer_id != by_id[b"c1-1"].producer_id
    offsets = [(r.topic, r.partition, r.offset) for r in records]
    assert offsets == sorted(offsets)

    expected = ["plain-1", "plain-2", "c1-1", "c1-2", "c1-3", "c1-other", "c2-1", "c2-2"]
    assert_exactly_once(committed(records), expected)
    assert_exactly_once(not_aborted(records), [*expected, "open-1", "open-2"])

    # The mock's read_committed consumer sees everything, aborted records included: the reason
    # this verifier exists. If this starts failing, the mock learned read_committed.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bs, isolation_level="read_committed",
                                auto_offset_reset="earliest", check_crcs=False)
    await consumer.start()
    try:
        seen: set[bytes] = set()
        deadline = time.monotonic() + 10
        while len(seen) < 11 and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                seen.update(m.key for m in batch if m.key is not None)
    finally:
        await consumer.stop()
    assert b"k-a-1" in seen


def test_delivery_report_diff() -> None:
    def rec(fid: str | None, offset: int) -> LogRecord:
        headers = [("fill_id", fid.encode())] if fid is not None else []
        return LogRecord("t", 0, offset, 0, None, None, headers, -1, -1, COMMITTED)

    records = [rec("a", 0), rec("b", 1), rec("b", 2), rec("x", 3), rec(None, 4)]
    report = delivery_report(records, ["a", "b", "c"])
    assert not report.ok
    assert report.missing == ["c"]
    assert report.duplicated == {"b": 2}
    assert report.unexpected == ["x", None]
    text = str(report)
    assert "missing (1): 'c'" in text and "'b' x2" in text and "unexpected (2)" in text
    with pytest.raises(AssertionError, match="MISMATCH"):
        assert_exactly_once(records, ["a", "b", "c"])
    assert delivery_report(records[:2], ["a", "b"]).ok


# -- proxy ---------------------------------------------------------------------------------------

async def _send_batch(producer: AIOKafkaProducer, topic: str, ids: list[str]) -> None:
    async with producer.transaction():
        futures = [await producer.send(topic, **_fill(i)) for i in ids]
        await asyncio.gather(*futures)


async def test_proxy_routes_all_traffic_and_survives_outages(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}fills"
    with KafkaProxy(broker.bootstrap_servers) as proxy:
        proxy_ports = {int(h.rsplit(":", 1)[1]) for h in proxy.bootstrap_servers.split(",")}
        assert len(proxy_ports) == 3

        producer = AIOKafkaProducer(
            bootstrap_servers=proxy.bootstrap_servers, transactional_id=f"{topic_prefix}txn",
            request_timeout_ms=3000, retry_backoff_ms=50,
        )
        await producer.start()
        try:
            # Every broker the client knows, and its transaction coordinator, is the proxy.
            known = {b.port for b in producer.client.cluster.brokers()}
            assert known == proxy_ports
            await _send_batch(producer, topic, [f"before-{i}" for i in range(50)])
            # ...including the connection to the transaction coordinator (FindCoordinator).
            used = {conn.port for conn in producer.client._conns.values()}
            assert len(producer.client._conns) >= 2 and used <= proxy_ports

            # Cut: nothing gets through, the client keeps reconnecting.
            proxy.cut()
            accepted = proxy.connections_accepted
            during = asyncio.create_task(
                _send_batch(producer, topic, [f"during-{i}" for i in range(50)]))
            await asyncio.sleep(1.5)
            assert not during.done()
            assert proxy.connections_accepted > accepted, "the client never retried"
            proxy.restore()
            await asyncio.wait_for(during, 30)

            # Stall: connections stay up but silent; the transaction completes on restore.
            proxy.stall()
            stalled = asyncio.create_task(
                _send_batch(producer, topic, [f"stalled-{i}" for i in range(50)]))
            await asyncio.sleep(1.0)
            assert not stalled.done()
            proxy.restore()
            await asyncio.wait_for(stalled, 30)

            proxy.slow(0.02)
            await _send_batch(producer, topic, ["slow-1"])
            proxy.restore()
        finally:
            await producer.stop()

        records = await read_log(proxy.bootstrap_servers, [topic])
        assert proxy.unrewritten == []

    expected = [f"{p}-{i}" for p in ("before", "during", "stalled") for i in range(50)]
    # Retries after the outages may have left aborted attempts behind; none may be committed twice.
    assert_exactly_once(committed(records), [*expected, "slow-1"])
    # The data is intact on the broker itself, read without the proxy.
    direct = await read_log(broker.bootstrap_servers, [topic])
    assert [(r.offset, r.status) for r in direct] == [(r.offset, r.status) for r in records]


# -- topic creation ------------------------------------------------------------------------------

async def test_topic_creation_on_the_mock(broker: EmbeddedBroker, topic_prefix: str) -> None:
    explicit, auto = f"{topic_prefix}explicit", f"{topic_prefix}auto"
    assert broker.create_topic(explicit, 2) is True
    # CreateTopics is not implemented by the mock: ensure_topics falls back to auto-creation.
    result = await ensure_topics(broker.bootstrap_servers, [
        TopicSpec(auto, 1, configs={"cleanup.policy": "compact"}),
    ])
    assert result.auto_created == [auto] and not result.created

    client = AIOKafkaClient(bootstrap_servers=broker.bootstrap_servers)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
    finally:
        await client.close()
    assert cluster.partitions_for_topic(explicit) == {0, 1}
    assert cluster.partitions_for_topic(auto) == {0, 1, 2, 3}  # the mock's default
