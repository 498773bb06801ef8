"""The sink's record sizes and checkpoint topic on real Apache Kafka (the mock has no topic
configs and no CreateTopics): topics created through the admin client, a dead letter far larger
than the topic's max.message.bytes committed truncated beside another source's fills, and a
checkpoint split over several records restored whole with read_committed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from publisher.checkpoint import Checkpoint, encode_checkpoint, read_checkpoints
from publisher.config import KafkaConfig
from publisher.event import DeadLetter
from publisher.kafkaclient import consumer_options, ensure_topics, topic_partitions
from publisher.metrics import Metrics
from publisher.sink import SourceBatch, TransactionalSink
from tests.harness.kafka import KafkaCluster, read_committed
from tests.test_sink_commit import fill

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]

LIMIT = 100_000


def _kafka(cluster: KafkaCluster, prefix: str, **extra: object) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=cluster.bootstrap, checkpoint_topic=f"{prefix}checkpoints",
                       dlq_topic=f"{prefix}dlq", topic_template=prefix + "fills.{venue}",
                       transactional_id_prefix=f"{prefix}tx", request_timeout_s=10, replication_factor=1,
                       **extra)  # type: ignore[arg-type]


async def _topic_config(cluster: KafkaCluster, topic: str, name: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = response.to_object()["resources"][0]["config_entries"]
        return next(e["config_value"] for e in entries if e["config_names"] == name)
    finally:
        await admin.close()


async def test_topics_are_created_with_the_admin_client_compacted_with_the_partitions_asked(
        real_kafka: KafkaCluster, topic_prefix: str) -> None:
    kafka = _kafka(real_kafka, topic_prefix)
    assert await topic_partitions(consumer_options(kafka, None), kafka.checkpoint_topic) is None  # not created
    result = await ensure_topics(kafka, None, [f"{topic_prefix}fills.kalshi"], checkpoint_partitions=3)
    assert result is not None and kafka.checkpoint_topic in result.created and not result.auto_created
    assert result.partitions[kafka.checkpoint_topic] == 3
    assert await _topic_config(real_kafka, kafka.checkpoint_topic, "cleanup.policy") == "compact"
    again = await ensure_topics(kafka, None, [f"{topic_prefix}fills.kalshi"], checkpoint_partitions=5)
    assert again is not None and not again.created and again.partitions[kafka.checkpoint_topic] == 3


async def test_a_huge_dead_letter_and_a_large_checkpoint_commit_beside_other_sources(
        real_kafka: KafkaCluster, topic_prefix: str) -> None:
    kafka = _kafka(real_kafka, topic_prefix, max_record_bytes=LIMIT)
    for topic in (kafka.dlq_topic, f"{topic_prefix}fills.kalshi"):
        await real_kafka.create_topic(topic, 2, {"max.message.bytes": str(LIMIT)})
    await real_kafka.create_topic(kafka.checkpoint_topic, 1,
                                  {"cleanup.policy": "compact", "max.message.bytes": str(LIMIT)})
    keys = [i.to_bytes(16, "big") for i in range(30_000)]  # 480 KB of window: 5+ records
    seen = {1_700_000_000 + s: b"".join(keys[s * 1000:(s + 1) * 1000]) for s in range(30)}
    letter = DeadLetter(source="a", venue="kalshi", error="bad", raw=msgspec.Raw(b'"' + b"x" * 2_000_000 + b'"'))
    sink = TransactionalSink(kafka, None, Metrics())
    await sink.start()
    runner = asyncio.create_task(sink.run())
    done: list[str] = []
    sink.submit(SourceBatch(source="a", venue="kalshi", fills=[fill("a", 1)], dead_letters=[letter],
                            checkpoint=encode_checkpoint(Checkpoint(source="a", venue="kalshi", watermark_ns=7,
                                                                    floor_ns=0, seen=seen)),
                            on_commit=lambda _ns: done.append("a")))
    sink.submit(SourceBatch(source="b", venue="kalshi", fills=[fill("b", 1)], dead_letters=[],
                            checkpoint=encode_checkpoint(Checkpoint(source="b", venue="kalshi", watermark_ns=8,
                                                                    floor_ns=0, seen={})),
                            on_commit=lambda _ns: done.append("b")))
    async with asyncio.timeout(30):
        while len(done) < 2:
            await asyncio.sleep(0.05)
    assert await sink.close(runner, 5)
    assert runner.exception() is None  # no failure of any kind: the producer was never given up
    dlq = await read_committed(real_kafka.bootstrap, [kafka.dlq_topic])
    assert len(dlq) == 1
    body = msgspec.json.decode(dlq[0].value)
    assert body["raw_truncated"] and body["raw_bytes"] == 2_000_002 and len(dlq[0].value) < LIMIT
    restored = await read_checkpoints(kafka.checkpoint_topic, ["a", "b"], consumer_options(kafka, None))
    assert restored["a"].seen == seen and restored["b"].watermark_ns == 8
