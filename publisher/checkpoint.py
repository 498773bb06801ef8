"""Per-source checkpoints: what a source has published, stored in Kafka beside the fills.

A checkpoint record (key = source name, compacted topic) is written in the same transaction as the
fills it accounts for, so the fills topics and the checkpoints can never disagree: after a crash
the newest committed checkpoint describes exactly the committed fills.

It holds the watermark (the start of the source's newest poll, the lower edge of the next overlap
window is `watermark - lookback`), the dedupe window's keys (see :mod:`publisher.dedupe`) and the
venue adapter's opaque paging hint. Values are msgpack: compact (16 bytes per remembered fill) and
versioned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class Checkpoint(msgspec.Struct, kw_only=True, frozen=True):
    """A source's committed position."""

    version: int = CHECKPOINT_VERSION
    source: str
    venue: str
    #: start of the newest poll whose fills are committed (ns since the epoch, publisher clock)
    watermark_ns: int
    #: lower edge of the dedupe window when written
    floor_ns: int
    #: execution second -> packed 16-byte fill keys
    seen: dict[int, bytes]
    paging_state: Any = None
    written_at_ns: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return _encoder.encode(checkpoint)


def decode_checkpoint(data: bytes) -> Checkpoint:
    return _decoder.decode(data)


async def read_checkpoints(
    topic: str, sources: Iterable[str], consumer_options: dict[str, Any], *, partitions: Iterable[int] | None = None
) -> dict[str, Checkpoint]:
    """The newest committed checkpoint of each named source, read from the whole topic, or only from
    `partitions` of it (a shard's partition); a named partition the topic lacks is an error.

    Reads with `isolation_level=read_committed` from the beginning up to the end offsets taken at
    the start, so checkpoints of aborted or still-open transactions are never restored (on real
    Kafka). Must run after the transactional producer is initialised: initialising aborts our
    previous incarnation's in-doubt transaction, which would otherwise hold the last stable offset
    back and make this read wait for the transaction timeout.
    """
    wanted = set(sources)
    only = None if partitions is None else set(partitions)
    found: dict[str, Checkpoint] = {}
    consumer = AIOKafkaConsumer(
        **consumer_options,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        # topics() refreshes a metadata copy the consumer does not keep, so ask the client directly
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - replaced by the sink rework
        present: set[int] = cluster.partitions_for_topic(topic) or set()
        if not present:
            log.warning("checkpoint topic %s does not exist yet: every source starts fresh", topic)
            return found
        if only is not None:
            missing = only - present
            if missing:
                raise LookupError(f"checkpoint topic {topic} has no partition {sorted(missing)} "
                                  f"(it has {len(present)})")
            present = only
        assignment = [TopicPartition(topic, p) for p in sorted(present)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        end = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.key is None:
                        continue
                    name = record.key.decode("utf-8", "replace")
                    if name not in wanted:
                        continue
                    if record.value is None:  # tombstone: the source was reset on purpose
                        found.pop(name, None)
                        continue
                    try:
                        found[name] = decode_checkpoint(record.value)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.error("unreadable checkpoint for source %s at %s:%d: %s", name, tp, record.offset, exc)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return found
