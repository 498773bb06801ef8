"""The real-Kafka harness itself: cached jars, a ready broker, what only real Kafka does, and the
skip that CI turns into a failure."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import require_real_kafka
from tests.harness import kafka
from tests.harness.delivery import ABORTED, COMMITTED, read_log
from tests.harness.kafka import KafkaCluster, read_committed

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]


def test_second_fetch_fetches_nothing(real_kafka: KafkaCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session cluster fetched the jars; fetching again must not run Maven."""
    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn ran although the jars are cached")

    monkeypatch.setattr(subprocess, "run", no_maven)
    libs = kafka.fetch()
    assert (libs / f"kafka_{kafka.SCALA_VERSION}-{kafka.KAFKA_VERSION}.jar").exists()
    assert str(libs).endswith(f"{kafka.KAFKA_VERSION}/libs")


def test_missing_java_skips_with_one_reason_or_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.shutil, "which", lambda _name: None)
    monkeypatch.delenv(kafka.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="need a Java runtime"):
        require_real_kafka()
    monkeypatch.setenv(kafka.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        require_real_kafka()


def test_missing_maven_without_cached_jars_names_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(kafka.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(kafka.shutil, "which", lambda name: None if name == "mvn" else "/usr/bin/java")
    reason = kafka.unavailable_reason()
    assert reason is not None and "mvn" in reason and str(tmp_path) in reason


async def test_read_committed_hides_aborted_and_raw_reader_sees_markers(real_kafka: KafkaCluster,
                                                                        topic_prefix: str) -> None:
    """What the mock cannot do: an aborted transaction is invisible to read_committed. The raw
    batch/marker reader speaks this broker's Fetch versions and classifies the same records."""
    topic = f"{topic_prefix}t"
    await real_kafka.create_topic(topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=real_kafka.bootstrap, transactional_id=f"{topic_prefix}tx",
                                enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"k")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed", key=b"k")
    finally:
        await producer.stop()
    assert [r.value for r in await read_committed(real_kafka.bootstrap, [topic])] == [b"committed"]
    raw = await read_log(real_kafka.bootstrap, [topic])
    assert [(r.value, r.status) for r in raw] == [(b"aborted", ABORTED), (b"committed", COMMITTED)]


async def test_lookups_name_the_only_node(real_kafka: KafkaCluster, topic_prefix: str) -> None:
    topic = f"{topic_prefix}t"
    await real_kafka.create_topic(topic, 1)
    assert await real_kafka.leader_of(topic, 0) == 1
    assert await real_kafka.coordinator_of(f"harness-{uuid.uuid4().hex}") == 1
    assert real_kafka.ready_after_s is not None
    print(f"\nOBSERVED real kafka 1 node ready after {real_kafka.ready_after_s:.1f}s")
