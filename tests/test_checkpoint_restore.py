"""Checkpoint restore against the embedded broker: restriction to a shard's partitions, and the
checkpoint topic's partition count as topic creation reports it."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from publisher.checkpoint import Checkpoint, encode_checkpoint, read_checkpoints
from publisher.config import KafkaConfig
from publisher.embedded_broker import EmbeddedBroker
from publisher.kafkaclient import consumer_options, ensure_topics

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


async def test_ensure_topics_reports_the_checkpoint_topics_partitions(broker: EmbeddedBroker,
                                                                      topic_prefix: str) -> None:
    kafka = _kafka(broker, topic_prefix)
    assert broker.create_topic(kafka.checkpoint_topic, partitions=3)
    result = await ensure_topics(kafka, None, [f"{topic_prefix}fills.kalshi"], checkpoint_partitions=5)
    assert result is not None
    # an existing topic keeps its count (the caller compares it with its shards)
    assert result.partitions[kafka.checkpoint_topic] == 3
    assert kafka.checkpoint_topic in result.existing
