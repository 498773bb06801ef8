"""Exactly once on real Apache Kafka (issue 10, scenarios 1-3): what the mock broker cannot show.

The publisher runs as a child process (`fill-publisher run`, real SIGTERM, SIGKILL, SIGSTOP)
against the session's single-node Kafka (:mod:`tests.harness.kafka`) and the venue simulators over
HTTP. Killing or freezing the publisher does not disturb the broker, so these tests share it.

Two witnesses judge every test:
- a plain `read_committed` consumer (:func:`tests.harness.kafka.read_committed`), counting each
  (source, fill_id) and checking the events against the simulators' canonical fills: what an
  application sees;
- the raw batch/marker reader (:mod:`tests.harness.delivery`), which speaks Kafka 4.4's Fetch
  versions: its `committed` view must agree, and it shows what happened to the transactions of
  killed and frozen instances (aborted, never left open).

No allowance for open transactions: on real Kafka a restarted (or second) instance's
InitProducerId aborts its predecessor's open transaction before the restart reads checkpoints.
Where a transaction must be in flight at the kill or the freeze, :class:`KafkaProxy` in front of
the broker delays every frame by a few ms so a transaction lasts long enough to be hit.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from publisher.app import EXIT_FENCED
from tests.harness.delivery import ABORTED, COMMITTED, OPEN, LogRecord, assert_exactly_once, committed, read_log
from tests.harness.kafka import KafkaCluster, count_fills, read_committed, source_and_fill
from tests.harness.proxy import KafkaProxy
from tests.harness.stack import NS, PublisherProcess, SourceSpec, Stack, free_port
from tests.test_faults_kafka import (  # noqa: F401 - cleanup is a fixture
    COMMON,
    LOOKBACK_S,
    cleanup,  # a fixture
    generate,
    observe,
    pending_fills,
    started,
    stop_generating,
    until,
)
from tests.test_integration import check_record, every_fill_exactly_once_across_sigterm_restart

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]

FAST_KAFKA = {"request_timeout_s": 3, "transaction_timeout_s": 5, "check_crcs": True}


def keys(expected: dict[str, tuple[SourceSpec, Any]]) -> list[tuple[str, str]]:
    """(source, fill_id) of each expected fill: a fill's identity to a consumer."""
    return [(spec.name, fill_id) for fill_id, (spec, _fill) in expected.items()]


async def judge(cluster: KafkaCluster, stack: Stack, expected: dict[str, tuple[SourceSpec, Any]],
                timeout_s: float = 60.0) -> list[Any]:
    """Both witnesses: the read_committed consumer (read again until every expected fill is there
    or time runs out) sees each fill once with the right value, key and headers; the raw reader's
    committed records agree and no transaction is left open. Returns the consumed records."""
    topics = [stack.topics["kalshi"], stack.topics["zll"]]
    wanted = keys(expected)
    deadline = time.monotonic() + timeout_s
    while True:
        consumed = await read_committed(cluster.bootstrap, topics)
        report = count_fills(consumed, wanted)
        if not report.missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert report.ok, str(report)
    for record in consumed:
        spec, fill = expected[source_and_fill(record)[1]]
        check_record(record, spec.name, fill.expected_event())
    raw = await read_log(cluster.bootstrap, topics)
    assert_exactly_once(committed(raw), expected)
    still_open = [r for r in raw if r.status == OPEN]
    assert not still_open, f"{len(still_open)} records of transactions never closed"
    return consumed


async def judge_run(cluster: KafkaCluster, stack: Stack, started_ns: int) -> tuple[dict[str, tuple[SourceSpec, Any]], list[Any]]:
    """End a run: stop the venues' new fills, then :func:`judge` every fill executed since the run
    started, less the lookback the first start reads. Returns the expected and consumed fills."""
    await stop_generating(stack)
    expected = stack.expected(started_ns - LOOKBACK_S * NS)
    return expected, await judge(cluster, stack, expected)


def real_stack(tmp: Path, bootstrap: str, prefix: str, **kafka: Any) -> Stack:
    return Stack(tmp, bootstrap, prefix, kafka_extra={**FAST_KAFKA, **kafka})


async def create_topics(cluster: KafkaCluster, stack: Stack) -> None:
    for name, topic in stack.topics.items():
        await cluster.create_topic(topic, 1 if name == "checkpoint" else 4)


async def two_sources(cluster: KafkaCluster, stack: Stack) -> Stack:
    await stack.kalshi("kalshi-a", **COMMON)
    await stack.zll("zll-a", **COMMON)
    await create_topics(cluster, stack)
    return stack


def fills_topics(stack: Stack) -> list[str]:
    return [stack.topics["kalshi"], stack.topics["zll"]]


def by_status(records: Iterable[LogRecord]) -> dict[str, int]:
    out = {COMMITTED: 0, ABORTED: 0, OPEN: 0}
    for record in records:
        out[record.status] += 1
    return out


# -- scenario 1 ------------------------------------------------------------------------------------

async def test_integration_every_fill_once_on_real_kafka(real_kafka: KafkaCluster, topic_prefix: str,
                                                          tmp_path: Path) -> None:
    """The integration scenario (four sources, history, bursts, late fills, venue inserts between
    pages, a poisoned fill, SIGTERM, fills while down, restart) on real Kafka with CRC checks on:
    every fill once, right values, key and headers, for the read_committed consumer too."""
    # the scenario's own Kafka timeouts, as on the mock; CRC checks on, as in production
    stack = Stack(tmp_path, real_kafka.bootstrap, topic_prefix, kafka_extra={"check_crcs": True})

    async def create_topic(topic: str, partitions: int) -> None:
        await real_kafka.create_topic(topic, partitions)

    try:
        _records, expected = await every_fill_exactly_once_across_sigterm_restart(stack, create_topic)
    finally:
        await stack.close()
    consumed = await judge(real_kafka, stack, expected, timeout_s=5)
    observe("real 1 integration", fills_in=len(expected), fills_out=len(consumed))


# -- scenario 2 ------------------------------------------------------------------------------------

KILLS = 20


async def test_sigkill_20_times_exactly_once_among_committed(real_kafka: KafkaCluster, topic_prefix: str,
                                                             tmp_path: Path, cleanup: list[Any]) -> None:
    """20 SIGKILLs while fills arrive all the time, half of them with a batch in flight (the proxy
    delays every frame by 20 ms so transactions last a while): every fill exactly once among
    committed records, no allowance for open transactions; every killed transaction that reached
    the log was aborted by the next start (the raw reader sees aborted records and no open one)."""
    proxy = KafkaProxy(real_kafka.bootstrap).start()
    cleanup.append(proxy)
    stack = await two_sources(real_kafka, real_stack(tmp_path, proxy.bootstrap_servers, topic_prefix))
    cleanup.append(stack)
    rng = random.Random(10)
    started_ns = time.time_ns()
    generate(stack, 40)
    in_flight = 0
    restarts: list[float] = []
    for i in range(KILLS):
        t0 = time.monotonic()
        proc = await started(stack, cleanup)
        restarts.append(time.monotonic() - t0)
        if i % 2:
            proxy.slow(0.02)
            try:
                await until("a batch in flight", lambda: pending_fills(proc), 5, every_s=0.01)  # noqa: B023
                in_flight += 1
            except AssertionError:
                pass  # killed anyway, at a random point
            await asyncio.sleep(rng.uniform(0, 0.15))
        else:
            await asyncio.sleep(rng.uniform(0.1, 0.6))
        await proc.kill()
        proxy.restore()

    proc = await started(stack, cleanup)
    await asyncio.sleep(1.0)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    code, took = await proc.terminate()
    assert code == 0 and took < 10, proc.log_tail()
    statuses = by_status(await read_log(real_kafka.bootstrap, fills_topics(stack)))
    assert in_flight >= KILLS // 4
    observe("real 2 sigkill", kills=KILLS, restarts_survived=KILLS, kills_with_batch_in_flight=in_flight,
            fills_in=len(expected), fills_out=len(consumed), raw_records_by_status=statuses,
            restart_to_ready_s_max=round(max(restarts), 2),
            restart_to_ready_s_median=round(sorted(restarts)[len(restarts) // 2], 2))


# -- scenario 3 ------------------------------------------------------------------------------------

async def freeze_with_transaction_open(proc: PublisherProcess, proxy: KafkaProxy, stack: Stack,
                                       bootstrap: str, attempts: int = 20) -> list[LogRecord]:
    """SIGSTOP `proc` while its transaction has records in the log and no marker yet; returns
    those open records (tries again, thawed, until a freeze lands inside a transaction)."""
    assert proc.proc is not None
    for _ in range(attempts):
        proxy.slow(0.03)
        await until("a batch in flight", lambda: pending_fills(proc), 10, every_s=0.01)
        await asyncio.sleep(0.12)
        proc.proc.send_signal(signal.SIGSTOP)
        proxy.restore()
        await asyncio.sleep(0.3)  # frames the proxy still held reach the broker
        raw = await read_log(bootstrap, [*fills_topics(stack), stack.topics["checkpoint"]])
        open_records = [r for r in raw if r.status == OPEN]
        if open_records:
            return open_records
        proc.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.5)
    raise AssertionError(f"no freeze landed inside a transaction in {attempts} attempts")


async def test_zombie_fenced_by_second_instance(real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path,
                                                cleanup: list[Any]) -> None:
    """Freeze a running instance (SIGSTOP) with a transaction open and start a second one with the
    same config: the second is ready long before the transaction timeout (its InitProducerId
    fences the first and aborts the open transaction); thawed, the first is fenced, commits
    nothing more, logs a CRITICAL line naming the transactional id and exits 3; the second goes on
    publishing, every fill exactly once."""
    txn_timeout_s = 20.0  # the broker is asked for 50 s: far beyond what a fenced start may take
    proxy = KafkaProxy(real_kafka.bootstrap).start()
    cleanup.append(proxy)
    stack = await two_sources(real_kafka, real_stack(tmp_path, proxy.bootstrap_servers, topic_prefix,
                                                     transaction_timeout_s=txn_timeout_s))
    cleanup.append(stack)
    started_ns = time.time_ns()
    generate(stack, 40)
    zombie = await started(stack, cleanup)
    await until("first commits", lambda: zombie.metric("fillpub_fills_published_total"), 20)
    open_records = await freeze_with_transaction_open(zombie, proxy, stack, real_kafka.bootstrap)
    zombie_producer = {(r.producer_id, r.producer_epoch) for r in open_records}

    stack.http_port = free_port()
    second = PublisherProcess(stack.write_config(), tmp_path / "second.log", stack.http_port)
    cleanup.append(second)
    t0 = time.monotonic()
    second.start()
    await second.wait_ready(txn_timeout_s)
    ready_s = time.monotonic() - t0
    raw = await read_log(real_kafka.bootstrap, [*fills_topics(stack), stack.topics["checkpoint"]])
    status_of = {(r.topic, r.partition, r.offset): r.status for r in raw}
    assert {status_of[(r.topic, r.partition, r.offset)] for r in open_records} == {ABORTED}
    committed_by_zombie = {(r.topic, r.partition, r.offset) for r in raw
                           if (r.producer_id, r.producer_epoch) in zombie_producer and r.status == COMMITTED}

    assert zombie.proc is not None
    zombie.proc.send_signal(signal.SIGCONT)
    code = await zombie._wait(30)
    assert code == EXIT_FENCED, zombie.log_tail()
    tid = f"{stack.prefix}publisher"
    critical = zombie.log_lines("CRITICAL", repr(tid))
    assert critical, zombie.log_tail()

    await asyncio.sleep(1.5)  # the second instance keeps publishing, unfenced
    assert second.alive, second.log_tail()
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    raw = await read_log(real_kafka.bootstrap, [*fills_topics(stack), stack.topics["checkpoint"]])
    assert {(r.topic, r.partition, r.offset) for r in raw if (r.producer_id, r.producer_epoch) in zombie_producer
            and r.status == COMMITTED} == committed_by_zombie, "the zombie committed after the fence"
    code, took = await second.terminate()
    assert code == 0 and took < 10, second.log_tail()
    observe("real 3 zombie", second_ready_after_s=round(ready_s, 2), broker_txn_timeout_s=txn_timeout_s + 30,
            zombie_open_records_aborted=len(open_records), zombie_exit=EXIT_FENCED, critical=critical[0][-160:],
            fills_in=len(expected), fills_out=len(consumed))
