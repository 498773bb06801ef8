"""The sink's commit loop as a state machine, against a fake producer (tests/sinkfakes.py): group
commit, abort vs giving the producer up vs final, callbacks only after the commit, record sizes, isolation of a
source whose records Kafka refuses, and the checkpoint's records. Fast: no broker, no network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from publisher.checkpoint import Checkpoint, decode_checkpoint, decode_part, encode_checkpoint
from publisher.config import KafkaConfig
from publisher.event import DeadLetter, FillEvent
from publisher.metrics import Metrics
from publisher.sink import (
    ProducerFencedError,
    ProducerStateLost,
    SourceBatch,
    TransactionalIdFencedError,
    TransactionalIdNotAuthorisedError,
    TransactionalSink,
)
from publisher.sink.batching import partition_for
from publisher.sink.held import HeldSources
from publisher.sink.records import record_budget
from tests.sinkfakes import LOST_ANSWER, PARTITIONS, Sent, World, install

KAFKA = KafkaConfig(bootstrap_servers="fake:9092", request_timeout_s=1, transaction_timeout_s=0.5,
                    max_record_bytes=65536)
CHECKPOINTS = KAFKA.checkpoint_topic


def fill(source: str, n: int, instrument: str = "KXBTC-1") -> FillEvent:
    return FillEvent(venue="kalshi", source=source, fill_id=f"{source}-{n}", order_id="o", instrument=instrument,
                     side="buy", price="0.5", quantity="1", fee=None, fee_currency=None, liquidity=None,
                     executed_at_ns=1_700_000_000_000_000_000 + n, observed_at_ns=1_700_000_000_000_000_000 + n)


def checkpoint(source: str, watermark_ns: int = 1, seen: dict[int, bytes] | None = None) -> Checkpoint:
    return Checkpoint(source=source, venue="kalshi", watermark_ns=watermark_ns, floor_ns=0, seen=seen or {})


class Committed:
    """on_commit callbacks of the batches a test made."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def batch(self, source: str, fills: int = 2, *, letters: list[DeadLetter] | None = None,
              cp: Checkpoint | None = None, tag: str = "") -> SourceBatch:
        name = tag or source
        return SourceBatch(source=source, venue="kalshi", fills=[fill(source, i) for i in range(fills)],
                           dead_letters=letters or [], checkpoint=encode_checkpoint(cp or checkpoint(source)),
                           on_commit=lambda _ns: self.calls.append(name))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return install(monkeypatch)


@pytest.fixture
async def sink(world: World) -> AsyncIterator[TransactionalSink]:
    s = TransactionalSink(KAFKA, None, Metrics(), max_backoff_s=0.01)
    await s.start()
    yield s


async def until(condition: Callable[[], Any], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def running(sink: TransactionalSink) -> asyncio.Task[None]:
    task = asyncio.create_task(sink.run())
    await asyncio.sleep(0)
    return task


async def stop(sink: TransactionalSink, task: asyncio.Task[None]) -> bool:
    return await sink.close(task, 2.0)


def records(world: World, topic: str) -> list[Sent]:
    return [r for r in world.committed() if r.topic == topic]


# -- group commit and callbacks ------------------------------------------------------------------

async def test_queued_batches_share_one_transaction_and_a_sources_newest_checkpoint_wins(
        world: World, sink: TransactionalSink) -> None:
    done = Committed()
    sink.submit(done.batch("a", cp=checkpoint("a", 1), tag="a1"))
    sink.submit(done.batch("b", cp=checkpoint("b", 5)))
    sink.submit(done.batch("a", cp=checkpoint("a", 2), tag="a2"))
    task = await running(sink)
    await until(lambda: len(done.calls) == 3)
    assert done.calls == ["a1", "b", "a2"] and world.calls("commit") == 1
    heads = {r.key: decode_checkpoint(r.value).watermark_ns for r in records(world, CHECKPOINTS) if r.value}
    assert heads == {b"a": 2, b"b": 5}
    assert len(records(world, "fills.kalshi")) == 6 and sink.pending_fills == 0
    assert await stop(sink, task)


async def test_callbacks_run_only_after_the_commit(world: World, sink: TransactionalSink) -> None:
    world.commit_gate = asyncio.Event()
    done = Committed()
    sink.submit(done.batch("a"))
    task = await running(sink)
    await until(lambda: any(entry[0] == "record" for entry in world.log))
    await asyncio.sleep(0.05)
    assert done.calls == [] and sink.pending_fills == 2  # records sent, not yet committed
    world.commit_gate.set()
    await until(lambda: done.calls == ["a"])
    assert sink.pending_fills == 0
    assert await stop(sink, task)


async def test_fill_records_keep_key_headers_partition_and_order(world: World, sink: TransactionalSink) -> None:
    done = Committed()
    sink.submit(done.batch("a", fills=7))  # more than one fake batch (3 records) per partition
    task = await running(sink)
    await until(lambda: done.calls)
    fills = records(world, "fills.kalshi")
    assert [r.value and msgspec.json.decode(r.value)["fill_id"] for r in fills] == [f"a-{i}" for i in range(7)]
    assert {r.key for r in fills} == {b"a:KXBTC-1"}
    assert {r.partition for r in fills} == {partition_for(b"a:KXBTC-1", range(PARTITIONS))}
    assert [name for name, _ in fills[0].headers] == ["fill_id", "venue", "source", "schema_version", "content-type"]
    assert await stop(sink, task)


# -- failures: abort, give up, final -----------------------------------------------------------------

async def test_a_failed_transaction_is_aborted_and_retried_on_the_same_producer(
        world: World, sink: TransactionalSink) -> None:
    world.faults["send_batch"] = [KafkaConnectionError("gone")]
    done = Committed()
    sink.submit(done.batch("a"))
    task = await running(sink)
    await until(lambda: done.calls)
    assert world.calls("abort") == 1 and len(world.producers) == 1
    assert len(records(world, "fills.kalshi")) == 2  # the aborted attempt's records are not counted
    assert await stop(sink, task)


async def lost_state(world: World, sink: TransactionalSink, done: Committed) -> ProducerStateLost:
    """Run the sink until it gives its producer up; checks what every such end has in common:
    the producer stopped and no other made, nothing more sent, the batch neither committed nor
    told, not ready, and its fills out of the process' backlog once the sink is closed (their
    checkpoint did not move: the next take fetches them again)."""
    task = await running(sink)
    with pytest.raises(ProducerStateLost) as raised:
        await asyncio.wait_for(task, 3)
    sent = len(world.sent)
    assert world.log[-1] == ("stop", 0) and len(world.producers) == 1
    assert done.calls == [] and records(world, "fills.kalshi") == [] and not sink.healthy
    assert not await stop(sink, task)
    assert sink.pending_fills == 2 and sink._backlog.total == 0
    assert len(world.sent) == sent
    return raised.value


async def test_a_broken_producer_state_gives_the_producer_up_without_an_abort(
        world: World, sink: TransactionalSink) -> None:
    """Only a new start followed by a restore may write again (publisher.shard_runner takes the
    shard again): a producer the sink initialised itself could fence the instance that owns the
    id now, and write from this instance's stale state."""
    world.faults["send_batch"] = [OutOfOrderSequenceNumber()]
    done = Committed()
    sink.submit(done.batch("a"))
    lost = await lost_state(world, sink, done)
    assert world.calls("abort") == 0 and world.calls("start") == 1
    assert "OutOfOrderSequenceNumber" in str(lost)


async def test_a_failing_abort_gives_the_producer_up(world: World, sink: TransactionalSink) -> None:
    world.faults["send"] = [KafkaError("send failed")]
    world.faults["abort"] = [AssertionError("illegal transition")]
    done = Committed()
    sink.submit(done.batch("a"))
    lost = await lost_state(world, sink, done)
    assert world.calls("abort") == 1 and "abort failed" in str(lost)


@pytest.mark.parametrize("fault", [LOST_ANSWER, KafkaError("refused")], ids=["took-effect", "refused"])
async def test_a_commit_that_failed_after_its_request_went_out_is_never_sent_again_by_the_sink(
        world: World, sink: TransactionalSink, fault: BaseException | str) -> None:
    """The coordinator may have committed it (the answer was lost): sending its batches again
    would publish them twice. The restore after the next start tells (it holds their checkpoint
    exactly when they committed)."""
    world.faults["commit"] = [fault]
    done = Committed()
    sink.submit(done.batch("a"))
    task = await running(sink)
    with pytest.raises(ProducerStateLost) as raised:
        await asyncio.wait_for(task, 3)
    assert world.calls("abort") == 0 and world.calls("begin") == 1 and "may have committed" in str(raised.value)
    assert done.calls == [] and world.log[-1] == ("stop", 0) and len(world.producers) == 1
    assert not await stop(sink, task)


async def test_a_hung_transaction_is_given_up_at_its_deadline_with_its_producer(
        world: World, sink: TransactionalSink) -> None:
    """aiokafka's idempotent producer retries forever while the broker is away (and an instance
    frozen past its deadline may find its id taken): the transaction is given up at its deadline,
    and with it the producer."""
    world.faults["send_batch"] = ["hang"]
    done = Committed()
    sink.submit(done.batch("a"))
    lost = await lost_state(world, sink, done)
    assert world.calls("abort") == 0 and "TimeoutError" in str(lost)


@pytest.mark.parametrize(("error", "lost"), [(ProducerFenced(), TransactionalIdFencedError),
                                             (TransactionalIdAuthorizationFailed(), TransactionalIdNotAuthorisedError)])
async def test_a_lost_transactional_id_is_final_and_sends_nothing_more(
        world: World, sink: TransactionalSink, error: KafkaError, lost: type[Exception]) -> None:
    done = Committed()
    sink.submit(done.batch("a"))
    task = await running(sink)
    await until(lambda: done.calls)
    world.faults["begin"] = [error]
    sent = len(world.sent)
    sink.submit(done.batch("b"))
    with pytest.raises(lost) as raised:
        await asyncio.wait_for(task, 2)
    assert isinstance(raised.value, ProducerFencedError)  # what app.py turns into exit 3
    assert len(world.sent) == sent and done.calls == ["a"] and not sink.healthy
    assert sink.pending_fills == 2  # kept for the instance that owns the id
    assert not await stop(sink, task)


async def test_start_retries_until_the_cluster_answers(world: World) -> None:
    world.faults["start"] = [KafkaConnectionError("down"), KafkaConnectionError("down")]
    sink = TransactionalSink(KAFKA, None, Metrics(), max_backoff_s=0.01)
    await sink.start()
    assert sink.healthy and world.calls("start") == 3 and world.calls("stop") == 2  # failed ones discarded


# -- record sizes and isolation ------------------------------------------------------------------------

async def test_a_dead_letter_too_large_is_truncated_with_its_size_and_digest(
        world: World, sink: TransactionalSink) -> None:
    raw = b'{"id": "x", "blob": "' + b"y" * 200_000 + b'"}'
    letter = DeadLetter(source="a", venue="kalshi", error="bad price", raw=msgspec.Raw(raw))
    done = Committed()
    sink.submit(done.batch("a", letters=[letter]))
    task = await running(sink)
    await until(lambda: done.calls)
    (dlq,) = records(world, KAFKA.dlq_topic)
    assert dlq.value is not None and len(dlq.value) <= record_budget(KAFKA.max_record_bytes)
    body = msgspec.json.decode(dlq.value)
    assert body["raw_truncated"] is True and body["raw_bytes"] == len(raw)
    assert raw.decode().startswith(body["raw"]) and len(body["raw"]) > 1000
    assert body["error"].startswith(f"bad price; raw fill of {len(raw)} bytes truncated")
    assert body["raw_blake2b"] in body["error"] and body["source"] == "a"
    assert await stop(sink, task)


async def test_a_fill_too_large_for_a_record_goes_to_the_dlq_truncated(world: World, sink: TransactionalSink) -> None:
    done = Committed()
    batch = done.batch("a", fills=1)
    huge = msgspec.structs.replace(batch.fills[0], order_id="o" * 70_000)
    batch.fills.append(huge)
    sink.submit(batch)
    task = await running(sink)
    await until(lambda: done.calls)
    assert len(records(world, "fills.kalshi")) == 1
    (dlq,) = records(world, KAFKA.dlq_topic)
    assert dlq.value is not None and "exceeds the record size limit" in msgspec.json.decode(dlq.value)["error"]
    assert await stop(sink, task)


async def test_a_source_whose_record_kafka_refuses_is_held_and_the_others_commit(
        world: World, sink: TransactionalSink) -> None:
    sink._held = HeldSources(first_pause_s=0.05)
    refused = [True]
    world.reject = lambda r: (MessageSizeTooLargeError("broker says no")
                              if refused[0] and r.key == b"a:KXBTC-1" else None)
    done = Committed()
    sink.submit(done.batch("a", tag="a1"))
    sink.submit(done.batch("b"))
    task = await running(sink)
    await until(lambda: "b" in done.calls)
    assert "a1" not in done.calls and sink.held is not None and "source a" in sink.held
    sink.submit(done.batch("a", tag="a2"))  # a later batch of a held source waits behind it
    sink.submit(done.batch("c"))
    await until(lambda: "c" in done.calls)
    assert "a2" not in done.calls and sink.healthy
    refused[0] = False
    await until(lambda: "a2" in done.calls, 3)
    assert done.calls.index("a1") < done.calls.index("a2") and sink.held is None
    assert await stop(sink, task)


async def test_a_topic_we_may_not_write_holds_only_its_source(world: World, sink: TransactionalSink) -> None:
    sink._held = HeldSources(first_pause_s=30)
    world.reject = lambda r: TopicAuthorizationFailedError() if r.key == b"a" and r.topic == KAFKA.dlq_topic else None
    letter = DeadLetter(source="a", venue="kalshi", error="e", raw=msgspec.Raw(b"{}"))
    done = Committed()
    sink.submit(done.batch("a", letters=[letter]))
    sink.submit(done.batch("b"))
    task = await running(sink)
    await until(lambda: "b" in done.calls)
    assert sink.pending_fills == 3  # a's 2 fills and its dead letter: held, not dropped
    assert not await stop(sink, task)


# -- checkpoint records ------------------------------------------------------------------------------

def window(fills: int, per_second: int = 1000) -> dict[int, bytes]:
    keys: dict[int, list[bytes]] = {}
    for i in range(fills):
        keys.setdefault(1_700_000_000 + i // per_second, []).append(i.to_bytes(16, "big"))
    return {second: b"".join(blobs) for second, blobs in keys.items()}


async def test_a_large_checkpoint_is_split_into_records_that_fit_in_one_partition(
        world: World, sink: TransactionalSink) -> None:
    done = Committed()
    seen = window(20_000)
    sink.submit(done.batch("a", cp=checkpoint("a", seen=seen)))
    task = await running(sink)
    await until(lambda: done.calls)
    written = records(world, CHECKPOINTS)
    budget = record_budget(KAFKA.max_record_bytes)
    assert len(written) > 5 and all(len(r.key or b"") + len(r.value or b"") <= budget for r in written)
    assert {r.partition for r in written} == {partition_for(b"a", range(PARTITIONS))}
    assert written[-1].key == b"a"  # the head last
    head = decode_checkpoint(written[-1].value or b"")
    parts = [decode_part(r.value or b"") for r in written[:-1]]
    assert head.parts == len(parts) and {p.generation for p in parts} == {head.generation}
    joined: dict[int, bytes] = {}
    for part in parts:
        for second, blob in part.seen.items():
            joined[second] = joined.get(second, b"") + blob
    assert joined == seen
    assert await stop(sink, task)


async def test_a_shrinking_checkpoint_tombstones_the_parts_it_no_longer_writes(
        world: World, sink: TransactionalSink) -> None:
    done = Committed()
    sink.submit(done.batch("a", cp=checkpoint("a", seen=window(20_000)), tag="big"))
    task = await running(sink)
    await until(lambda: done.calls)
    big = decode_checkpoint(records(world, CHECKPOINTS)[-1].value or b"").parts
    sink.submit(done.batch("a", cp=checkpoint("a", seen=window(5_000)), tag="small"))
    await until(lambda: len(done.calls) == 2)
    second = [r for r in records(world, CHECKPOINTS)][big + 1:]
    head = decode_checkpoint(second[-1].value or b"")
    tombstones = [r.key for r in second if r.value is None]
    assert 0 < head.parts < big
    assert tombstones == [f"a#part{i}".encode() for i in range(head.parts + 1, big + 1)]
    assert await stop(sink, task)


async def test_checkpoint_partition_puts_every_checkpoint_record_there(world: World) -> None:
    sink = TransactionalSink(KAFKA, None, Metrics(), transactional_id="fp-3", checkpoint_partition=3)
    await sink.start()
    assert world.producers[0].options["transactional_id"] == "fp-3" and sink.transactional_id == "fp-3"
    done = Committed()
    sink.submit(done.batch("a", cp=checkpoint("a", seen=window(10_000))))
    sink.submit(done.batch("b"))
    task = await running(sink)
    await until(lambda: len(done.calls) == 2)
    assert {r.partition for r in records(world, CHECKPOINTS)} == {3}
    assert await stop(sink, task)
