"""The checkpoint topic on real Apache Kafka (issue 10, scenario 5): it really compacts, and a
restart restores correctly from the compacted topic.

The checkpoint topic is created compacted, as the product creates it, with segments rolled every
100 ms (Kafka 4 refuses a `segment.bytes` below 1 MiB) and an eager cleaner
(`min.cleanable.dirty.ratio` 0.01, no compaction lag), so the broker's log cleaner runs within
seconds. librdkafka's mock has no log cleaner at all.

The bound (a checkpoint record never exceeds the topic's max.message.bytes, however large the
dedupe window) runs once the tree has `kafka.max_record_bytes` and split checkpoints.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from publisher.checkpoint import decode_checkpoint
from publisher.config import KafkaConfig
from tests.harness.delivery import read_log
from tests.harness.kafka import KafkaCluster
from tests.test_faults_kafka import (  # noqa: F401 - cleanup is a fixture
    COMMON,
    LOOKBACK_S,
    cleanup,
    generate,
    observe,
    started,
    stop_generating,
    until,
)
from tests.test_realkafka_delivery import judge_run, real_stack

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]

EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}


async def test_checkpoint_topic_compacts_and_restore_after_compaction_is_right(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """Many commits (a checkpoint record each), SIGTERM, the cleaner removes superseded
    checkpoints (and the markers of finished transactions); fills arrive while the publisher is
    down; the restart restores each source's newest checkpoint from the compacted topic and
    publishes every fill exactly once across both runs."""
    stack = real_stack(tmp_path, real_kafka.bootstrap, topic_prefix)
    cleanup.append(stack)
    await stack.kalshi("kalshi-a", **COMMON)
    await stack.zll("zll-a", **COMMON)
    for name, topic in stack.topics.items():
        if name == "checkpoint":
            await real_kafka.create_topic(topic, 1, EAGER_COMPACTION)
        else:
            await real_kafka.create_topic(topic, 4)
    checkpoint_topic = [stack.topics["checkpoint"]]
    started_ns = time.time_ns()
    generate(stack, 40)
    proc = await started(stack, cleanup)
    await until("checkpoint records", lambda: _checkpoints(real_kafka, checkpoint_topic, 10), 30)
    early = await read_log(real_kafka.bootstrap, checkpoint_topic)
    newest_early = {r.key: r.offset for r in early}
    superseded = {r.offset for r in early if r.offset != newest_early[r.key]}

    async def compacted() -> list[Any] | None:
        now = await read_log(real_kafka.bootstrap, checkpoint_topic)
        return now if not superseded & {r.offset for r in now} else None

    # the publisher keeps committing (new segments roll); the cleaner removes superseded records
    remaining = await until("the log cleaner to compact the checkpoint topic", compacted, 60, every_s=0.5)
    code, _took = await proc.terminate()
    assert code == 0, proc.log_tail()
    await stop_generating(stack)
    final = await read_log(real_kafka.bootstrap, checkpoint_topic)
    newest = {r.key: r for r in final}
    assert set(newest) == {b"kalshi-a", b"zll-a"}
    assert {decode_checkpoint(r.value).source for r in newest.values() if r.value is not None} == {"kalshi-a", "zll-a"}
    last_offset = max(r.offset for r in final)

    generate(stack, 40)  # fills while the publisher is down, then a restart from the compacted topic
    await asyncio.sleep(1.0)
    log_before = len(proc.logs())
    proc = await started(stack, cleanup)
    await asyncio.sleep(2.0)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    code, _took = await proc.terminate()
    assert code == 0, proc.log_tail()
    assert "no checkpoint" not in proc.logs()[log_before:]
    observe("real 5 compaction", superseded_records_removed=len(superseded), checkpoint_log_end_offset=last_offset,
            records_left_after_compaction=len(final), first_compacted_read=len(remaining),
            fills_in=len(expected), fills_out=len(consumed))


async def _checkpoints(cluster: KafkaCluster, topic: list[str], n: int) -> bool:
    return len(await read_log(cluster.bootstrap, topic)) >= n


#: the smallest record limit the publisher accepts (kafka.max_record_bytes), and the checkpoint
#: topic's max.message.bytes in the bound test: a window of 10,000 fills (160 KB) cannot fit
SMALL_RECORD_BYTES = 65536


@pytest.mark.skipif("max_record_bytes" not in KafkaConfig.__struct_fields__,
                    reason="the checkpoint size bound (kafka.max_record_bytes, split checkpoints) is not in this tree")
async def test_checkpoint_of_a_large_window_stays_under_the_topics_max_message_bytes(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """A dedupe window far larger than the checkpoint topic's max.message.bytes (64 KiB): every
    checkpoint record the broker accepted is within the limit (the broker would refuse a larger
    one and fail the transaction), the checkpoint is split into parts, and a restart restores
    the whole window: the 10,000 fills re-read by its first poll are all recognised, none
    published twice, and new fills still published."""
    stack = real_stack(tmp_path, real_kafka.bootstrap, topic_prefix, max_record_bytes=SMALL_RECORD_BYTES)
    cleanup.append(stack)
    sim = await stack.kalshi("kalshi-a", **{**COMMON, "page_limit": 1000, "max_requests_per_s": 1000})
    for name, topic in stack.topics.items():
        # compacted as the product creates it, but not eagerly: the parts written while the window
        # is large must still be in the log when the test reads it (a smaller later checkpoint
        # tombstones them, and an eager cleaner would then remove them, under load before the end)
        configs = {"cleanup.policy": "compact", "max.message.bytes": str(SMALL_RECORD_BYTES)} \
            if name == "checkpoint" else {}
        await real_kafka.create_topic(topic, 1 if name == "checkpoint" else 4, configs)
    started_ns = time.time_ns()
    sim.add_fills(10_000, late_s=LOOKBACK_S / 2)  # all inside the window of the first start
    proc = await started(stack, cleanup)
    await until("the backlog committed", lambda: proc.metric("fillpub_fills_published_total"), 60)
    generate(stack, 40)
    await asyncio.sleep(2.0)
    code, _took = await proc.terminate()
    assert code == 0, proc.log_tail()
    await asyncio.sleep(1.0)  # fills while it is down
    proc = await started(stack, cleanup)
    await asyncio.sleep(2.0)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    code, _took = await proc.terminate()
    assert code == 0, proc.log_tail()
    records = await read_log(real_kafka.bootstrap, [stack.topics["checkpoint"]])
    sizes = [len(r.key or b"") + len(r.value or b"") for r in records]
    parts = [r for r in records if r.key and b"#part" in r.key]
    assert parts, "a 160 KB window in 64 KiB records must be split"
    assert max(sizes) <= SMALL_RECORD_BYTES
    observe("real 5b checkpoint bound", fills_in=len(expected), fills_out=len(consumed),
            checkpoint_records=len(records), part_records=len(parts), largest_record_bytes=max(sizes),
            topic_max_message_bytes=SMALL_RECORD_BYTES)
