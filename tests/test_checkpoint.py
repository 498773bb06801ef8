"""Checkpoint records: the version check, the split into records that fit, restore whole or not at
all, and what compaction can leave of a split checkpoint (no broker: records in log order)."""

from __future__ import annotations

import msgspec
import pytest

from publisher.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointVersionError,
    Records,
    checkpoint_records,
    checkpoints_from_records,
    decode_checkpoint,
    encode_checkpoint,
)
from publisher.floor import BelowFloor
from publisher.sink.records import record_budget
from publisher.venues.fields import MAX_TEXT_LENGTH
from publisher.venues.zll import END_IDS

LIMIT = 64 * 1024


def window(fills: int, per_second: int = 1000, salt: int = 0) -> dict[int, bytes]:
    keys: dict[int, list[bytes]] = {}
    for i in range(fills):
        keys.setdefault(1_700_000_000 + i // per_second, []).append((i + salt * 10**9).to_bytes(16, "big"))
    return {second: b"".join(blobs) for second, blobs in keys.items()}


def checkpoint(source: str = "a", watermark_ns: int = 1, seen: dict[int, bytes] | None = None) -> Checkpoint:
    return Checkpoint(source=source, venue="kalshi", watermark_ns=watermark_ns, floor_ns=0, seen=seen or {})


def compact(log: Records) -> Records:
    """What the log cleaner leaves: the newest record of each key, at its place in the log."""
    newest = {key: offset for offset, (key, _) in enumerate(log)}
    return [record for offset, record in enumerate(log) if newest[record[0]] == offset]


def test_a_small_checkpoint_is_one_record_as_before() -> None:
    cp = checkpoint(seen=window(100))
    (record,) = checkpoint_records(cp, LIMIT)
    assert record == (b"a", encode_checkpoint(cp))
    assert decode_checkpoint(record[1] or b"").parts == 0


def test_a_version_1_checkpoint_still_restores() -> None:
    v1 = msgspec.msgpack.encode({"version": 1, "source": "a", "venue": "kalshi", "watermark_ns": 5, "floor_ns": 0,
                                 "seen": {7: b"k" * 16}, "paging_state": None, "written_at_ns": 3})
    assert checkpoints_from_records([(b"a", v1)], ["a"])["a"].seen == {7: b"k" * 16}


def test_a_newer_checkpoint_version_is_a_clear_error() -> None:
    newer = msgspec.msgpack.encode({"version": CHECKPOINT_VERSION + 1, "source": "a", "something": "new"})
    with pytest.raises(CheckpointVersionError, match=f"format version {CHECKPOINT_VERSION + 1}.*newer fill-publisher"):
        decode_checkpoint(newer)
    with pytest.raises(CheckpointVersionError, match="source a at record 0"):
        checkpoints_from_records([(b"a", newer)], ["a"])


@pytest.mark.parametrize("fills", [5_000, 70_000])
def test_a_large_window_is_split_under_the_limit_and_restores_whole(fills: int) -> None:
    cp = checkpoint(seen=window(fills, per_second=40_000))  # seconds larger than a record, too
    records = checkpoint_records(cp, LIMIT)
    assert len(records) > fills * 16 // LIMIT
    assert all(len(key) + len(value or b"") <= LIMIT for key, value in records)
    restored = checkpoints_from_records(records, ["a"])["a"]
    assert restored.seen == cp.seen and restored.watermark_ns == cp.watermark_ns


def test_a_head_restores_only_with_all_its_parts() -> None:
    old = checkpoint(watermark_ns=1, seen=window(100))
    new = checkpoint_records(checkpoint(watermark_ns=2, seen=window(20_000)), LIMIT)
    missing = [*checkpoint_records(old, LIMIT), *new[:1], *new[2:]]  # part 2 lost
    assert checkpoints_from_records(missing, ["a"])["a"].watermark_ns == 1  # not at all: the one before stands
    assert checkpoints_from_records([*checkpoint_records(old, LIMIT), *new], ["a"])["a"].watermark_ns == 2


def test_parts_of_another_generation_never_mix_in() -> None:
    first = checkpoint_records(checkpoint(watermark_ns=1, seen=window(20_000, salt=1)), LIMIT)
    second = checkpoint_records(checkpoint(watermark_ns=2, seen=window(20_000, salt=2)), LIMIT)
    # the second write's part 1 lost, the first write's part 1 still there
    log = [*first, *second[1:]]
    assert checkpoints_from_records(log, ["a"])["a"].watermark_ns == 1
    mixed = [*first[:-1], second[-1]]  # a head over parts of another write
    assert "a" not in checkpoints_from_records(mixed, ["a"])


def test_compaction_of_split_checkpoints_restores_the_newest() -> None:
    log: Records = []
    written = 0
    for generation, fills in enumerate([30_000, 10_000, 25_000, 2_000, 100], 1):
        records = checkpoint_records(checkpoint(watermark_ns=generation, seen=window(fills, salt=generation)), LIMIT,
                                     stale_parts=range(1, written + 1))
        written = sum(1 for _, value in records[:-1] if value is not None)
        log.extend(records)
        for view in (log, compact(log)):
            restored = checkpoints_from_records(view, ["a"])["a"]
            assert restored.watermark_ns == generation
            assert restored.seen == window(fills, salt=generation)
    # the last write fits one record: every part key left is a tombstone
    assert all(value is None for key, value in compact(log) if b"#part" in key)


def test_part_records_of_other_sources_are_ignored() -> None:
    log = [*checkpoint_records(checkpoint("b", seen=window(20_000)), LIMIT),
           *checkpoint_records(checkpoint("a"), LIMIT)]
    assert set(checkpoints_from_records(log, ["a"])) == {"a"}


def test_a_record_whose_value_disagrees_with_its_key_is_not_restored(caplog: pytest.LogCaptureFixture) -> None:
    good = checkpoint_records(checkpoint("a", watermark_ns=1), LIMIT)
    split = checkpoint_records(checkpoint("a", watermark_ns=2, seen=window(20_000)), LIMIT)
    swapped = [(split[1][0], split[0][1]), (split[0][0], split[1][1]), *split[2:]]  # parts 1 and 2 under each other's key
    assert checkpoints_from_records([*good, *swapped], ["a"])["a"].watermark_ns == 1
    elsewhere = [(b"a", encode_checkpoint(checkpoint("b", watermark_ns=3)))]  # source b's head under a's key
    assert checkpoints_from_records([*good, *elsewhere], ["a"])["a"].watermark_ns == 1
    assert "not what its key says" in caplog.text


def test_a_version_2_split_checkpoint_still_restores() -> None:
    # as version 2 writes them, field for field: the format is never renamed or renumbered
    part = msgspec.msgpack.encode({"version": 2, "source": "a", "generation": 9, "index": 1, "seen": {7: b"k" * 16}})
    head = msgspec.msgpack.encode({"version": 2, "source": "a", "venue": "zll", "watermark_ns": 5, "floor_ns": 0,
                                   "seen": {}, "paging_state": {"resume_offset": 3}, "written_at_ns": 4, "parts": 1,
                                   "generation": 9})
    restored = checkpoints_from_records([(b"a#part1", part), (b"a", head)], ["a"])["a"]
    assert restored.seen == {7: b"k" * 16} and restored.paging_state == {"resume_offset": 3}
    assert restored.written_at_ns == 4 and restored.venue == "zll"


def test_a_version_2_checkpoint_without_the_below_floor_memory_restores_without_it() -> None:
    # as written before the memory was carried: a reader judges from its floor up (publisher.floor)
    head = msgspec.msgpack.encode({"version": 2, "source": "a", "venue": "zll", "watermark_ns": 5, "floor_ns": 0,
                                   "seen": {7: b"k" * 16}, "paging_state": None, "written_at_ns": 4, "parts": 0,
                                   "generation": 0})
    restored = checkpoints_from_records([(b"a", head)], ["a"])["a"]
    assert restored.below_floor_from_s is None and restored.below_floor_keys == {}
    assert restored.seen == {7: b"k" * 16}


def test_the_below_floor_memory_stays_in_the_head_and_fits_the_smallest_record() -> None:
    memory = BelowFloor(0, keep=10**6)
    for second in range(1_700_000_000, 1_700_005_000):  # a key a second: the most framing per key
        memory.forget({second: [second.to_bytes(16, "big")]})
    covered, carried = memory.packed()
    long_ids = [f"{i}".rjust(MAX_TEXT_LENGTH, "x") for i in range(END_IDS)]  # ZLL's ends, ids at their longest
    paging = {"resume_offset": 10**9, "head": {"ids": long_ids, "confirmed": True},
              "tail": {"ids": long_ids, "confirmed": True}}
    cp = msgspec.structs.replace(checkpoint(seen=window(20_000)), paging_state=paging, below_floor_from_s=covered,
                                 below_floor_keys=carried)
    smallest = record_budget(64 * 1024)  # kafka.max_record_bytes at its lowest
    records = checkpoint_records(cp, smallest)
    assert len(records) > 1 and all(len(key) + len(value or b"") <= smallest for key, value in records)
    restored = checkpoints_from_records(records, ["a"])["a"]
    assert restored.below_floor_keys == carried and restored.below_floor_from_s == covered
    assert restored.paging_state == paging and restored.seen == cp.seen
