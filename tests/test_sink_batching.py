"""Partition batching (publisher.sink.batching) against the fake producer's batches."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from publisher.sink.batching import PartitionBatches, partition_for
from tests.sinkfakes import PARTITIONS, World, producer_class


def producer(world: World, capacity: int = 2) -> object:
    return producer_class(world, batch_capacity=capacity)(max_batch_size=1000)


def test_partition_is_the_default_partitioners_choice() -> None:
    for key in (b"a:X", b"kalshi-main:KXBTC-25", b"z" * 300):
        assert partition_for(key, {3, 1, 0, 2}) == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])


async def test_records_gather_per_partition_in_order_and_full_batches_are_handed_over() -> None:
    world = World()
    batches = PartitionBatches(producer(world), 1000)  # type: ignore[arg-type]
    for i in range(5):
        key = b"s:A"
        if not batches.append("t", key, f"{i}".encode(), []):
            assert await batches.add("t", key, f"{i}".encode(), [])
    await batches.flush()
    assert [r.value for r in world.sent] == [b"0", b"1", b"2", b"3", b"4"]
    assert {r.partition for r in world.sent} == {partition_for(b"s:A", range(PARTITIONS))}
    assert world.calls("send_batch") == 3  # 2 + 2 + 1


async def test_a_record_larger_than_the_limit_is_refused_not_sent() -> None:
    world = World()
    batches = PartitionBatches(producer(world), 100)  # type: ignore[arg-type]
    assert not await batches.add("t", b"k", b"v" * 100, [])
    assert await batches.add("t", b"k", b"v" * 50, [("h", b"x")])
    await batches.flush()
    assert [len(r.value or b"") for r in world.sent] == [50]
