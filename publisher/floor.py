"""Fills a venue serves below a source's overlap window: published long ago, or never.

The poll loop ignores fills older than the window's floor: the dedupe window has forgotten them.
Most of them were published while they were inside the window (venues serve older fills along
with the new ones: ZLL has no time filter). One that never was is a fill lost to lateness beyond
`lookback_s`; it must be counted, not ignored.

:class:`BelowFloor` keeps the keys the dedupe window forgot during the last `memory_s` seconds of
execution time. A fill below the floor but within that span, executed at or after the floor this
process started with, whose key is not among them, was never published by this process or (via
the restored checkpoint) its predecessors. Older fills cannot be judged from memory: the audit
(`fill-publisher audit`) is the check for those. A fill counted is remembered, so it is counted
once however long the venue keeps serving it.
"""

from __future__ import annotations

from collections.abc import Sequence

from publisher.event import FillEvent

_NS = 1_000_000_000
#: seconds of execution time below the floor judged from memory (the keys the window forgot in
#: that span stay in memory: about a minute of fills more than the window holds)
BELOW_FLOOR_MEMORY_S = 60


class BelowFloor:
    """The keys forgotten in the last `memory_s` seconds below the floor; see the module docstring."""

    __slots__ = ("_buckets", "_keys", "_memory_ns", "_start_floor_ns")

    def __init__(self, start_floor_ns: int, memory_s: float = BELOW_FLOOR_MEMORY_S):
        self._start_floor_ns = start_floor_ns
        self._memory_ns = int(memory_s * _NS)
        self._keys: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def forget(self, dropped: dict[int, list[bytes]], floor_ns: int) -> None:
        """Take the keys the window just forgot; drop what lies beyond the memory below `floor_ns`."""
        for second, keys in dropped.items():
            self._buckets.setdefault(second, []).extend(keys)
            self._keys.update(keys)
        oldest_s = (floor_ns - self._memory_ns) // _NS
        for second in [s for s in self._buckets if s < oldest_s]:
            self._keys.difference_update(self._buckets.pop(second))

    def unpublished(self, below: Sequence[FillEvent], keys: Sequence[bytes], floor_ns: int) -> list[FillEvent]:
        """The fills of `below` (all older than `floor_ns`; `keys` their dedupe keys) known never
        to have been published; each is remembered, so a later call does not return it again."""
        oldest = max(self._start_floor_ns, floor_ns - self._memory_ns)
        found = []
        for fill, key in zip(below, keys, strict=True):
            if fill.executed_at_ns < oldest or key in self._keys:
                continue
            self._keys.add(key)
            self._buckets.setdefault(fill.executed_at_ns // _NS, []).append(key)
            found.append(fill)
        return found
