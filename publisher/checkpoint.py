"""Per-source checkpoints: what a source has published, stored in Kafka beside the fills.

A checkpoint (key = source name, compacted topic) is written in the same transaction as the fills
it accounts for, so the fills topics and the checkpoints can never disagree: after a crash the
newest committed checkpoint describes exactly the committed fills.

It holds the watermark (the start of the source's newest poll, the lower edge of the next overlap
window is `watermark - lookback`), the floor of the dedupe window when written, the window's keys
(see :mod:`publisher.dedupe`), the newest part of the memory of keys below the floor (see
:mod:`publisher.floor`) and the venue adapter's opaque paging hint: the state of
:class:`publisher.state.SourceState`, which builds and restores it. Values are msgpack:
compact (16 bytes per remembered fill) and versioned; a version newer than this code reads is an
error (:class:`CheckpointVersionError`), never a silent fresh start. A field that an older reader
may ignore without harm is added within a version: the below-floor memory is one (a reader that
drops it judges fewer fills below the floor, never one wrongly), so a rollback still restores.

Size: the window grows with the fills inside `lookback_s` (16 bytes each), a Kafka record may not
(`max.message.bytes`, 1 MB by default); the below-floor memory is capped
(:data:`publisher.floor.CARRIED_BYTES`) and stays in the head. A checkpoint that does not fit one record is split
(:func:`checkpoint_records`): parts keyed `<source>#part<i>` carry the window's keys, then the head
(keyed `<source>`) says how many parts and which generation (a random id per write) they belong to.
Every record of a source goes to one partition, parts before the head, in one transaction. Restore
(:func:`read_checkpoints`) takes a head only together with all its parts of its generation: a head
whose parts are missing or of another generation (which compaction could leave only with a broken
log) is ignored with an error line and the previous complete checkpoint stands. Part keys a smaller
later checkpoint no longer uses get tombstones in the same transaction.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from publisher.kafkaclient import topic_partitions

log = logging.getLogger(__name__)

#: 1: one record per checkpoint; 2: `parts` and `generation` (a split checkpoint)
CHECKPOINT_VERSION = 2
#: between a source name and a part number in a part's key; source names cannot hold it
PART_KEY_MARK = "#part"
#: room kept in a record for msgpack's framing of the fields beside the window's keys
_FRAMING_BYTES = 512
#: msgpack framing of one `second -> keys` entry at most (int64 key, bin32 header)
_ENTRY_BYTES = 16

#: a checkpoint as Kafka records: (key, value), value None for a tombstone
Records = list[tuple[bytes, bytes | None]]


class CheckpointVersionError(ValueError):
    """A checkpoint written by a newer fill-publisher than this one (its format is unknown here)."""


class Checkpoint(msgspec.Struct, kw_only=True, frozen=True):
    """A source's committed position (the head record of a split checkpoint). Every field is
    read back: `version` by the check on decode, `source` against the record's key, `venue` by the
    start-up check that the source still polls that venue, `written_at_ns` by `status`, the rest
    by the restore (:class:`publisher.state.SourceState`). Fields are never renamed or renumbered:
    records of every version stay readable."""

    version: int = CHECKPOINT_VERSION
    #: the source's name, as the record's key
    source: str
    venue: str
    #: start of the newest poll whose fills are committed (ns since the epoch, publisher clock)
    watermark_ns: int
    #: lower edge of the dedupe window when written: the window vouches for nothing below it
    floor_ns: int
    #: execution second -> packed 16-byte fill keys (a split checkpoint's head: empty)
    seen: dict[int, bytes]
    paging_state: Any = None
    written_at_ns: int = 0
    #: part records `<source>#part1` .. `#part<parts>` holding the window's keys; 0: not split
    parts: int = 0
    #: the write the parts belong to (random), so a head restores only with its own parts
    generation: int = 0
    #: the oldest execution second the below-floor memory covers (None: written without it; the
    #: memory then covers from `floor_ns` up)
    below_floor_from_s: int | None = None
    #: execution second -> packed 16-byte keys the window forgot below `floor_ns` (its newest seconds)
    below_floor_keys: dict[int, bytes] = {}


class CheckpointPart(msgspec.Struct, kw_only=True, frozen=True):
    """One part of a split checkpoint's window (`source` and `index` repeat the record's key:
    restore ignores a part whose key and value disagree)."""

    version: int = CHECKPOINT_VERSION
    source: str
    generation: int
    index: int
    seen: dict[int, bytes]


class _Version(msgspec.Struct):
    version: int = 1


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Checkpoint)
_part_decoder = msgspec.msgpack.Decoder(CheckpointPart)
_version_decoder = msgspec.msgpack.Decoder(_Version)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return _encoder.encode(checkpoint)


def _check_version(data: bytes, what: str) -> None:
    version = _version_decoder.decode(data).version
    if version > CHECKPOINT_VERSION:
        raise CheckpointVersionError(f"{what} has format version {version}, written by a newer fill-publisher; "
                                     f"this one reads up to version {CHECKPOINT_VERSION}")


def decode_checkpoint(data: bytes) -> Checkpoint:
    """A checkpoint (head) record's value; :class:`CheckpointVersionError` for a newer format."""
    _check_version(data, "checkpoint")
    return _decoder.decode(data)


def decode_part(data: bytes) -> CheckpointPart:
    """A checkpoint part record's value; :class:`CheckpointVersionError` for a newer format."""
    _check_version(data, "checkpoint part")
    return _part_decoder.decode(data)


def part_key(source: str, index: int) -> bytes:
    return f"{source}{PART_KEY_MARK}{index}".encode()


def checkpoint_records(checkpoint: Checkpoint, max_bytes: int, *, stale_parts: Iterable[int] = ()) -> Records:
    """`checkpoint` as Kafka records of at most `max_bytes` (key and value) each, parts first.

    One record when it fits; else parts of the window's keys and a head with `parts` and a new
    `generation`. `stale_parts` are part numbers a previous checkpoint wrote: those this one does
    not write get tombstones.
    """
    key = checkpoint.source.encode()
    whole = encode_checkpoint(checkpoint)
    records: Records = []
    if len(key) + len(whole) <= max_bytes:
        head = whole
        written = 0
    else:
        generation = random.getrandbits(63)
        room = max_bytes - len(part_key(checkpoint.source, 1 << 20)) - _FRAMING_BYTES
        if room < _ENTRY_BYTES + 16:
            raise ValueError(f"max_bytes {max_bytes} leaves no room for a checkpoint part")
        chunks = _chunks(checkpoint.seen, room)
        for index, chunk in enumerate(chunks, 1):
            part = CheckpointPart(source=checkpoint.source, generation=generation, index=index, seen=chunk)
            records.append((part_key(checkpoint.source, index), _encoder.encode(part)))
        written = len(chunks)
        head = encode_checkpoint(msgspec.structs.replace(checkpoint, seen={}, parts=written, generation=generation))
    records.extend((part_key(checkpoint.source, index), None) for index in sorted(set(stale_parts)) if index > written)
    records.append((key, head))
    return records


def encoded_checkpoint_records(data: bytes, source: str, max_bytes: int, *,
                               stale_parts: Iterable[int] = ()) -> Records:
    """:func:`checkpoint_records` of an encoded checkpoint: decoded only when it must be split."""
    key = source.encode()
    if len(key) + len(data) <= max_bytes:
        return [*((part_key(source, index), None) for index in sorted(set(stale_parts))), (key, data)]
    return checkpoint_records(decode_checkpoint(data), max_bytes, stale_parts=stale_parts)


def _chunks(seen: dict[int, bytes], room: int) -> list[dict[int, bytes]]:
    """The window's keys cut into maps of at most `room` bytes (msgpack framing counted); one
    second's keys may be cut across maps (restore joins them)."""
    chunks: list[dict[int, bytes]] = []
    current: dict[int, bytes] = {}
    left = room
    for second in sorted(seen):
        blob = seen[second]
        while blob:
            if left < _ENTRY_BYTES + 16:
                chunks.append(current)
                current, left = {}, room
            take = min(len(blob), (left - _ENTRY_BYTES) // 16 * 16)
            current[second] = blob[:take]
            blob = blob[take:]
            left -= take + _ENTRY_BYTES
    if current:
        chunks.append(current)
    return chunks


class _Assembler:
    """Checkpoints rebuilt from records in log order: a head counts only with all its parts."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.found: dict[str, Checkpoint] = {}
        self._parts: dict[tuple[str, int], CheckpointPart] = {}

    def add(self, key: bytes, value: bytes | None, where: str) -> None:
        name = key.decode("utf-8", "replace")
        source, mark, number = name.partition(PART_KEY_MARK)
        if source not in self.wanted:
            return
        try:
            if mark:
                index = int(number)
                if value is None:
                    self._parts.pop((source, index), None)
                    return
                part = decode_part(value)
                if (part.source, part.index) != (source, index):
                    raise ValueError(f"the part holds part {part.index} of source {part.source!r}, not what "
                                     "its key says")
                self._parts[(source, index)] = part
            elif value is None:  # tombstone: the source was reset on purpose
                self.found.pop(source, None)
            else:
                head = decode_checkpoint(value)
                if head.source != source:
                    raise ValueError(f"the checkpoint is source {head.source!r}'s, not what its key says")
                self._head(source, head, where)
        except CheckpointVersionError as exc:
            raise CheckpointVersionError(f"source {source} at {where}: {exc}") from None
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.error("unreadable checkpoint record %r at %s: %s", name, where, exc)

    def _head(self, source: str, head: Checkpoint, where: str) -> None:
        if not head.parts:
            self.found[source] = head
            return
        seen: dict[int, bytes] = dict(head.seen)
        for index in range(1, head.parts + 1):
            part = self._parts.get((source, index))
            if part is None or part.generation != head.generation:
                log.error("checkpoint of source %s at %s is incomplete (part %d of %d of generation %d missing); "
                          "keeping the one before it", source, where, index, head.parts, head.generation)
                return
            for second, blob in part.seen.items():
                seen[second] = seen.get(second, b"") + blob
        self.found[source] = msgspec.structs.replace(head, seen=seen)


def checkpoints_from_records(records: Iterable[tuple[bytes, bytes | None]], sources: Iterable[str]
                             ) -> dict[str, Checkpoint]:
    """The newest complete checkpoint of each named source in `records` (key, value) of one
    partition, in log order: what :func:`read_checkpoints` does with what it reads."""
    assembler = _Assembler(set(sources))
    for offset, (key, value) in enumerate(records):
        assembler.add(key, value, f"record {offset}")
    return assembler.found


async def read_checkpoints(
    topic: str, sources: Iterable[str], consumer_options: dict[str, Any], *, partitions: Iterable[int] | None = None
) -> dict[str, Checkpoint]:
    """The newest committed checkpoint of each named source, read from the whole topic, or only from
    `partitions` of it (a shard's partition); a named partition the topic lacks is an error.

    Reads with `isolation_level=read_committed` from the beginning up to the end offsets taken at
    the start, so checkpoints of aborted or still-open transactions are never restored (on real
    Kafka). Must run after the transactional producer is initialised: initialising aborts our
    previous incarnation's in-doubt transaction, which would otherwise hold the last stable offset
    back and make this read wait for the transaction timeout. A checkpoint of a newer format
    raises :class:`CheckpointVersionError` (a downgrade must not start the source afresh).

    Each partition is assembled on its own, in its log order (a tombstone cancels only records of
    its own partition: `fill-publisher reshard` leaves one where a checkpoint moved away, and the
    order across partitions is whatever the fetches returned). Should a source have a checkpoint
    in more than one partition, the newest written wins.
    """
    wanted = set(sources)
    only = None if partitions is None else set(partitions)
    # the admin client's Metadata answer (describing a missing topic never creates it)
    present = await topic_partitions(consumer_options, topic)
    if not present:
        log.warning("checkpoint topic %s does not exist yet: every source starts fresh", topic)
        return {}
    if only is not None:
        missing = only - present
        if missing:
            raise LookupError(f"checkpoint topic {topic} has no partition {sorted(missing)} (it has {len(present)})")
        present = only
    consumer = AIOKafkaConsumer(
        **consumer_options,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    assemblers = {p: _Assembler(wanted) for p in present}
    await consumer.start()
    try:
        assignment = [TopicPartition(topic, p) for p in sorted(present)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        end = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                assembler = assemblers[tp.partition]
                for record in records:
                    if record.key is not None:
                        assembler.add(record.key, record.value, f"{tp.topic}:{tp.partition}:{record.offset}")
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return newest(assembler.found for assembler in assemblers.values())


def newest(found: Iterable[dict[str, Checkpoint]]) -> dict[str, Checkpoint]:
    """Each source's newest checkpoint (by when it was written) among several partitions' finds."""
    out: dict[str, Checkpoint] = {}
    for checkpoints in found:
        for name, checkpoint in checkpoints.items():
            other = out.get(name)
            if other is None or (checkpoint.written_at_ns, checkpoint.watermark_ns) > (other.written_at_ns,
                                                                                       other.watermark_ns):
                out[name] = checkpoint
    return out
