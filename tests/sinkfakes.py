"""A stand-in for AIOKafkaProducer for the sink's unit tests: no network, every call recorded.

It offers what the sink uses of aiokafka's public producer API (start/stop, transactions, send,
create_batch/send_batch, partitions_for) and lets a test make any call fail or hang. Integration
tests never use it: they run the real producer against a real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import RecordMetadata, TopicPartition

import publisher.sink.producer

PARTITIONS = 4
#: a `commit` fault: the commit takes effect, then the answer is lost (the call raises this error)
LOST_ANSWER = "lost-answer"


@dataclass
class Sent:
    """One record as the producer was handed it (in a batch or alone)."""

    producer: int
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    #: its offset in its partition (the sink's `partition`, else 0), counted per partition
    offset: int = -1


@dataclass
class World:
    """Shared by every fake producer a test's sink builds: the log and the faults."""

    log: list[tuple[Any, ...]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    producers: list[FakeProducer] = field(default_factory=list)
    #: call name -> errors the next calls raise, one each ("hang": never returns; for "commit",
    #: an error raised before the commit takes effect, or LOST_ANSWER)
    faults: dict[str, list[BaseException | str]] = field(default_factory=dict)
    #: a record for which this returns an error makes its send's future fail with it
    reject: Callable[[Sent], BaseException | None] | None = None
    #: set while commit_transaction waits on it (to look at the sink mid-commit)
    commit_gate: asyncio.Event | None = None
    #: the next offset of each (topic, partition)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def committed(self) -> list[Sent]:
        """Records of committed transactions, in order (a transaction's records are those sent
        between its begin and its commit by the same producer)."""
        out: list[Sent] = []
        open_: dict[int, list[Sent]] = {}
        for entry in self.log:
            kind, pid = entry[0], entry[1]
            if kind == "begin":
                open_[pid] = []
            elif kind == "record":
                open_.setdefault(pid, []).append(entry[2])
            elif kind == "commit":
                out.extend(open_.pop(pid, []))
            elif kind == "abort":
                open_.pop(pid, None)
        return out

    def calls(self, kind: str) -> int:
        return sum(1 for entry in self.log if entry[0] == kind)


class FakeBatch:
    """What `create_batch()` returns: append() gives None once the batch is full (`capacity`
    records), or when the record does not fit its `max_bytes` (like aiokafka's, an empty batch
    takes any record)."""

    def __init__(self, capacity: int, max_bytes: int):
        self.records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        self._capacity = capacity
        self._left = max_bytes

    def append(self, *, key: bytes, value: bytes, timestamp: int | None, headers: list[tuple[str, bytes]]) -> Any:
        size = len(key) + len(value) + sum(len(name) + len(data) for name, data in headers)
        if self.records and (len(self.records) >= self._capacity or size > self._left):
            return None
        self.records.append((key, value, headers))
        self._left -= size
        return object()


def producer_class(world: World, *, batch_capacity: int = 3) -> type:
    """A FakeProducer class bound to `world` (patch it over publisher.sink.producer.AIOKafkaProducer)."""

    class Bound(FakeProducer):
        def __init__(self, **options: Any):
            super().__init__(world, options, batch_capacity)

    return Bound


def install(monkeypatch: pytest.MonkeyPatch, *, batch_capacity: int = 3) -> World:
    """A fresh World whose fake producers stand in for every AIOKafkaProducer the sink builds."""
    world = World()
    monkeypatch.setattr(publisher.sink.producer, "AIOKafkaProducer", producer_class(world, batch_capacity=batch_capacity))
    return world


class FakeProducer:
    def __init__(self, world: World, options: dict[str, Any], batch_capacity: int):
        self.world = world
        self.options = options
        self.id = len(world.producers)
        self._capacity = batch_capacity
        self.client = self  # discard() closes `producer.client`
        world.producers.append(self)

    async def _call(self, kind: str, *args: Any) -> None:
        self.world.log.append((kind, self.id, *args))
        faults = self.world.faults.get(kind)
        if faults:
            fault = faults.pop(0)
            if fault == "hang":
                await asyncio.Event().wait()
            assert isinstance(fault, BaseException)
            raise fault

    async def start(self) -> None:
        await self._call("start")

    async def stop(self) -> None:
        await self._call("stop")

    async def close(self) -> None:
        # what tear_down() calls on `producer.client` (here the producer itself) when stop() did not end
        self.world.log.append(("close", self.id))

    async def begin_transaction(self) -> None:
        await self._call("begin")

    async def commit_transaction(self) -> None:
        gate = self.world.commit_gate
        if gate is not None:
            await gate.wait()
        faults = self.world.faults.get("commit")
        if faults and faults[0] == LOST_ANSWER:
            faults.pop(0)
            self.world.log.append(("commit", self.id))
            raise KafkaConnectionError("the commit's answer was lost")
        if faults and isinstance(faults[0], BaseException):
            # refused before it took effect: the transaction stays open (a rebuild aborts it)
            self.world.log.append(("commit-failed", self.id))
            raise faults.pop(0)
        await self._call("commit")

    async def abort_transaction(self) -> None:
        await self._call("abort")

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self._capacity, self.options["max_batch_size"])

    def _record(self, record: Sent) -> asyncio.Future[RecordMetadata]:
        where = (record.topic, record.partition or 0)
        record.offset = self.world.offsets.get(where, 0)
        self.world.offsets[where] = record.offset + 1
        self.world.log.append(("record", self.id, record))
        self.world.sent.append(record)
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        error = self.world.reject(record) if self.world.reject else None
        if error is None:
            future.set_result(RecordMetadata(where[0], where[1], TopicPartition(*where), record.offset, -1, 0, 0))
        else:
            future.set_exception(error)
        return future

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        await self._call("send_batch", topic)
        futures = [self._record(Sent(self.id, topic, partition, key, value, headers))
                   for key, value, headers in batch.records]
        return asyncio.ensure_future(_all(futures))

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None,
                   timestamp_ms: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> Any:
        await self._call("send", topic)
        return self._record(Sent(self.id, topic, partition, key, value, list(headers or [])))


async def _all(futures: list[asyncio.Future[RecordMetadata]]) -> None:
    await asyncio.gather(*futures)
