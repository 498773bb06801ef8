"""The dedupe window: admission, pruning at the floor, checkpoint round trip, memory per key."""

from __future__ import annotations

import tracemalloc

from publisher.dedupe import KEY_SIZE, SeenWindow, fill_key

S = 1_000_000_000


def test_admit_once_and_remember() -> None:
    window = SeenWindow(floor_ns=100 * S)
    key = fill_key("abc")
    assert len(key) == KEY_SIZE
    assert window.admit(key, 150 * S) is True
    assert window.admit(key, 150 * S) is False
    assert key in window and len(window) == 1


def test_advance_forgets_whole_seconds_below_the_floor_only() -> None:
    window = SeenWindow(floor_ns=0)
    old, edge, new = fill_key("old"), fill_key("edge"), fill_key("new")
    window.admit(old, 99 * S + 999_999_999)
    window.admit(edge, 100 * S + 5)
    window.admit(new, 200 * S)
    window.advance(100 * S + 500)  # floor inside second 100: that second is kept whole
    assert old not in window
    assert edge in window and new in window
    window.advance(50 * S)  # never moves back
    assert window.floor_ns == 100 * S


def test_packed_round_trip_drops_below_floor() -> None:
    window = SeenWindow(floor_ns=10 * S)
    keys = [fill_key(str(i)) for i in range(100)]
    for i, key in enumerate(keys):
        window.admit(key, (10 + i % 7) * S)
    packed = window.packed()
    assert all(len(blob) % KEY_SIZE == 0 for blob in packed.values())
    same = SeenWindow.from_packed(10 * S, packed)
    assert len(same) == 100 and all(k in same for k in keys)
    later = SeenWindow.from_packed(13 * S, packed)
    assert all((k in later) == ((10 + i % 7) >= 13) for i, k in enumerate(keys))


def test_packed_cache_follows_changes() -> None:
    window = SeenWindow()
    window.admit(fill_key("a"), 5 * S)
    first = window.packed()
    window.admit(fill_key("b"), 5 * S)
    assert len(window.packed()[5]) == 2 * KEY_SIZE != len(first[5])


def test_memory_per_remembered_fill_is_small() -> None:
    n = 50_000
    ids = [f"{i:08x}-1c4f-7a2b-8e5d-3f6a7b8c9d0e" for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    window = SeenWindow()
    for i, fill_id in enumerate(ids):
        window.admit(fill_key(fill_id), (1_000 + i // 100) * S)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # the budget is 200 bytes per remembered fill
    assert used / n < 200, used / n
