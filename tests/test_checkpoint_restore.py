"""Checkpoint restore against the embedded broker: restriction to a shard's partitions, the
checkpoint topic's partition count as topic creation reports it, and a split checkpoint written
by the real sink and producer read back whole."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from publisher.checkpoint import Checkpoint, encode_checkpoint, read_checkpoints
from publisher.config import KafkaConfig
from publisher.embedded_broker import EmbeddedBroker
from publisher.kafkaclient import consumer_options, ensure_topics
from publisher.metrics import Metrics
from publisher.sink import SourceBatch, TransactionalSink

pytestmark = pytest.mark.integration


def _kafka(broker: EmbeddedBroker, prefix: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker.bootstrap_servers, check_crcs=False,
                       checkpoint_topic=f"{prefix}checkpoints", dlq_topic=f"{prefix}dlq",
                       topic_template=prefix + "fills.{venue}", request_timeout_s=5)


def _checkpoint(source: str, watermark_ns: int) -> bytes:
    return encode_checkpoint(Checkpoint(source=source, venue="kalshi", watermark_ns=watermark_ns, floor_ns=0, seen={}))


async def test_restore_reads_only_the_named_partitions(broker: EmbeddedBroker, topic_prefix: str) -> None:
    kafka = _kafka(broker, topic_prefix)
    assert broker.create_topic(kafka.checkpoint_topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(kafka.checkpoint_topic, _checkpoint("a", 1), key=b"a", partition=0)
        await producer.send_and_wait(kafka.checkpoint_topic, _checkpoint("b", 2), key=b"b", partition=2)
    finally:
        await producer.stop()
    options = consumer_options(kafka, None)
    everything = await read_checkpoints(kafka.checkpoint_topic, ["a", "b"], options)
    assert {name: c.watermark_ns for name, c in everything.items()} == {"a": 1, "b": 2}
    shard = await read_checkpoints(kafka.checkpoint_topic, ["a", "b"], options, partitions=[2])
    assert {name: c.watermark_ns for name, c in shard.items()} == {"b": 2}
    with pytest.raises(LookupError, match=r"no partition \[5\]"):
        await read_checkpoints(kafka.checkpoint_topic, ["a", "b"], options, partitions=[5])


async def test_a_tombstone_cancels_only_its_own_partitions_records(broker: EmbeddedBroker,
                                                                    topic_prefix: str) -> None:
    """`fill-publisher reshard` moves a checkpoint to another partition and leaves a tombstone
    where it was: whichever partition a read reaches first, the moved checkpoint restores. Where a
    source has one in two partitions, the newest written wins."""
    kafka = _kafka(broker, topic_prefix)
    assert broker.create_topic(kafka.checkpoint_topic, partitions=3)

    def written(source: str, watermark_ns: int, at_ns: int) -> bytes:
        return encode_checkpoint(Checkpoint(source=source, venue="kalshi", watermark_ns=watermark_ns, floor_ns=0,
                                            seen={}, written_at_ns=at_ns))

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        # the moved checkpoint first in the log of partition 1, the tombstone later in partition 0
        for key, value, partition in [(b"a", written("a", 5, 50), 1), (b"a", written("a", 1, 10), 0), (b"a", None, 0),
                                      (b"b", written("b", 2, 20), 0), (b"b", written("b", 3, 30), 2)]:
            await producer.send_and_wait(kafka.checkpoint_topic, value, key=key, partition=partition)
    finally:
        await producer.stop()
    for _ in range(3):  # the fetches' order across partitions is not fixed: read several times
        found = await read_checkpoints(kafka.checkpoint_topic, ["a", "b"], consumer_options(kafka, None))
        assert {name: c.watermark_ns for name, c in found.items()} == {"a": 5, "b": 3}


async def test_ensure_topics_reports_the_checkpoint_topics_partitions(broker: EmbeddedBroker,
                                                                      topic_prefix: str) -> None:
    kafka = _kafka(broker, topic_prefix)
    assert broker.create_topic(kafka.checkpoint_topic, partitions=3)
    result = await ensure_topics(kafka, None, [f"{topic_prefix}fills.kalshi"], checkpoint_partitions=5)
    assert result is not None
    # an existing topic keeps its count (the caller compares it with its shards)
    assert result.partitions[kafka.checkpoint_topic] == 3
    assert kafka.checkpoint_topic in result.existing


async def test_a_split_checkpoint_written_by_the_sink_restores_whole(broker: EmbeddedBroker, topic_prefix: str) -> None:
    kafka = msgspec.structs.replace(_kafka(broker, topic_prefix), max_record_bytes=65536,
                                    transactional_id_prefix=f"{topic_prefix}tx")
    for topic in (kafka.checkpoint_topic, kafka.dlq_topic, f"{topic_prefix}fills.kalshi"):
        assert broker.create_topic(topic, partitions=3)
    keys = [i.to_bytes(16, "big") for i in range(20_000)]
    seen = {1_700_000_000 + s: b"".join(keys[s * 1000:(s + 1) * 1000]) for s in range(20)}
    sink = TransactionalSink(kafka, None, Metrics())
    await sink.start()
    runner = asyncio.create_task(sink.run())
    committed = asyncio.Event()
    sink.submit(SourceBatch(source="a", venue="kalshi", fills=[], dead_letters=[],
                            checkpoint=encode_checkpoint(Checkpoint(source="a", venue="kalshi", watermark_ns=7,
                                                                    floor_ns=0, seen=seen)),
                            on_commit=lambda _ns: committed.set()))
    await asyncio.wait_for(committed.wait(), 20)
    assert await sink.close(runner, 5)
    restored = await read_checkpoints(kafka.checkpoint_topic, ["a"], consumer_options(kafka, None))
    assert restored["a"].seen == seen and restored["a"].watermark_ns == 7
