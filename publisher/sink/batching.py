"""Partition batching: one transaction's fill records gathered into one record batch per partition.

`producer.send()` costs a metadata lookup, a pure-Python murmur2 and a future per record;
appending to a `create_batch()` builder and handing full batches to `send_batch()` costs a small
fraction of that (the ceiling rows of bench/README.md). The
partition is the default partitioner's choice for the key (the producer is built with it), looked
up once per key and transaction, so keys land where `send()` put them, and records keep their order
within a partition.

A record too large for a batch of its own (`record_bytes`) is refused (:meth:`add` returns False)
instead of being sent: the broker would refuse it and fail the whole transaction. The check costs
nothing on the fast path: a record that fits an open batch (:meth:`append`) fits the limit, since
the producer's batches are no larger than it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka.partitioner import DefaultPartitioner

from publisher.sink.records import Headers, record_bytes

_PARTITIONER = DefaultPartitioner()


class BatchProducer(Protocol):
    """What :class:`PartitionBatches` uses of AIOKafkaProducer (public methods only)."""

    async def partitions_for(self, topic: str) -> Any: ...

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any: ...


def partition_for(key: bytes, partitions: Any) -> int:
    """The partition `send()` picks for a keyed record: murmur2 of the key over the partitions."""
    ordered = sorted(partitions)
    return _PARTITIONER(key, ordered, ordered)


class PartitionBatches:
    """One transaction's records, gathered into one record batch per partition."""

    __slots__ = ("_open", "_partition_of", "_producer", "_record_bytes", "futures")

    def __init__(self, producer: BatchProducer, record_bytes: int):
        self._producer = producer
        self._record_bytes = record_bytes
        # the builders `create_batch()` returns (aiokafka's BatchBuilder)
        self._open: dict[tuple[str, int], Any] = {}
        self._partition_of: dict[tuple[str, bytes], tuple[str, int]] = {}
        self.futures: list[asyncio.Future[object]] = []

    def append(self, topic: str, key: bytes, value: bytes, headers: Headers) -> bool:
        """Add a record to its partition's open batch; False when :meth:`add` must do it."""
        slot = self._partition_of.get((topic, key))
        if slot is None:
            return False
        builder = self._open.get(slot)
        return builder is not None and builder.append(key=key, value=value, timestamp=None, headers=headers) is not None

    async def add(self, topic: str, key: bytes, value: bytes, headers: Headers) -> bool:
        """The slow path of :meth:`append`: find the partition, hand over a full batch. False (and
        nothing sent) when the record's key, value and headers exceed `record_bytes`."""
        if record_bytes(key, value, headers) > self._record_bytes:
            return False
        producer = self._producer
        slot = self._partition_of.get((topic, key))
        if slot is None:
            slot = self._partition_of[(topic, key)] = (topic, partition_for(key, await producer.partitions_for(topic)))
            if self.append(topic, key, value, headers):
                return True  # another key of the same partition opened its batch already
        full = self._open.pop(slot, None)
        if full is not None:
            self.futures.append(await producer.send_batch(full, topic, partition=slot[1]))
        builder = self._open[slot] = producer.create_batch()
        builder.append(key=key, value=value, timestamp=None, headers=headers)
        return True

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        while self._open:
            (topic, partition), builder = self._open.popitem()
            self.futures.append(await self._producer.send_batch(builder, topic, partition=partition))
