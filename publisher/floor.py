"""Fills a venue serves below a source's overlap window: published long ago, or never.

The poll loop ignores fills older than the window's floor: the dedupe window has forgotten them.
Most of them were published while they were inside the window (venues serve older fills along
with the new ones: ZLL has no time filter, Kalshi's `min_ts` is whole seconds). One that never was
is a fill lost to lateness beyond `lookback_s`; it must be counted, not ignored. Two signals tell
the two apart, and a fill is judged lost when either says so:

- **Memory** (:class:`BelowFloor`): the keys the window forgot, kept for the newest seconds below
  the floor. It *covers* the seconds from :attr:`BelowFloor.covered_from_s` up to the floor: every
  fill published with an execution time there is in it. A fill served there whose key is not was
  never published. Nothing below the floor of a source's first start was ever published, so the
  cover starts there and never reaches below it; it also ends where older seconds were dropped.
  What it holds is tied to what the adapters can serve below the floor when they read only part
  of the list: Kalshi's `min_ts` lets through the second before the floor's, ZLL's walk reads at
  most one page below the floor (newest first) or a page plus the fills that crossed the floor
  since the previous poll (oldest first). So the memory keeps the newest seconds until they hold
  :data:`KEEP_PAGES` pages (`page_limit`) of keys on top of those the window forgot last, and drops
  older seconds; a second is never split. The checkpoint carries its newest seconds (at most
  :data:`CARRIED_BYTES`), so a restart keeps judging.
- **Position** (`FetchResult.arrived_below`, from the adapter): fills listed now that the venue did
  not list at the previous poll. A fill is published by a poll that lists it while it is inside
  the window, so one first listed below the floor was never published, however old it is. ZLL
  adds fills at one end of its list (in insertion order, late ones too) and its adapter keeps ids
  from both ends in its paging state; see :mod:`publisher.venues.zll`.

A fill judged lost is counted once: the memory remembers it where it covers its second, and the
positional signal names a fill only on the poll where it first appears. What neither can judge (a
fill older than the memory's cover that the adapter does not see arrive) is left to the audit
(`fill-publisher audit`); docs/limits.md lists those cases.

Keys are kept as the first :data:`PREFIX` bytes of their 16-byte dedupe key, packed per execution
second: a fill is looked up among the keys of its own second, where a false match needs two of
a second's keys to agree on 64 bits. A fill the venue now dates in another second than when it
was published is looked for in every second before it is called lost.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from publisher.event import FillEvent

_NS = 1_000_000_000
#: bytes of each remembered key: the start of its 16-byte dedupe key
PREFIX = 8
#: pages of keys (`page_limit` each) the memory keeps below the floor at least, beyond the keys the
#: window forgot last: a page is what ZLL's walk reads below the floor, and another one leaves room
#: for fills there that are no published keys (dead letters, lost fills, whole seconds)
KEEP_PAGES = 2
#: the most the checkpoint carries of the memory (its newest seconds): far inside the smallest
#: record a checkpoint may use (`kafka.max_record_bytes` is at least 64 KiB), beside the rest of it
CARRIED_BYTES = 16 * 1024
#: msgpack framing of one second in the checkpoint at most (int key, bin header)
_SECOND_BYTES = 12


class BelowFloor:
    """The keys published in the newest seconds below a source's floor; see the module docstring.

    `covered_from_s`: the oldest second the memory covers (the first start's floor second, or what
    a checkpoint carried); `keep`: how many keys to keep at least; `packed`: second -> packed key
    prefixes, as :meth:`packed` gives them.
    """

    __slots__ = ("_buckets", "_covered_s", "_keep", "_keys")

    def __init__(self, covered_from_s: int, keep: int, packed: Mapping[int, bytes] | None = None):
        self._covered_s = covered_from_s
        self._keep = keep
        #: second -> packed prefixes, oldest second first
        self._buckets: dict[int, bytes] = {}
        self._keys = 0
        for second in sorted(packed or {}):
            blob = packed[second]  # type: ignore[index]
            if len(blob) % PREFIX:
                raise ValueError(f"corrupt below-floor memory for second {second}")
            if second >= covered_from_s and blob:
                self._buckets[second] = blob
                self._keys += len(blob) // PREFIX

    def __len__(self) -> int:
        return self._keys

    @property
    def covered_from_s(self) -> int:
        """The oldest execution second whose published keys are all remembered."""
        return self._covered_s

    def forget(self, dropped: Mapping[int, list[bytes]]) -> None:
        """Take the keys the window just forgot (second -> keys, as
        :meth:`~publisher.dedupe.SeenWindow.advance` returns them); drop the oldest seconds beyond
        what the memory keeps."""
        if not dropped:
            return
        buckets = self._buckets
        added = 0
        for second in sorted(dropped):
            keys = dropped[second]
            blob = b"".join([key[:PREFIX] for key in keys])
            if second in buckets:
                buckets[second] += blob
            else:
                self._insert(second, blob)
            added += len(keys)
        self._keys += added
        self._drop_oldest(self._keep + added)

    def judge(self, below: Sequence[FillEvent], keys: Sequence[bytes],
              arrived: Collection[str] | None = None) -> list[FillEvent]:
        """The fills of `below` (all older than the floor; `keys` their dedupe keys) known never to
        have been published: not remembered, and either in a second the memory covers or among
        `arrived` (venue ids the adapter saw listed for the first time). Those in a covered second
        are remembered, so a later call does not return them again."""
        buckets = self._buckets
        covered = self._covered_s
        candidates: list[tuple[FillEvent, bytes]] = []
        for fill, key in zip(below, keys, strict=True):
            second = fill.executed_at_ns // _NS
            blob = buckets.get(second)
            if blob is not None:
                prefix = key[:PREFIX]
                at = blob.find(prefix)
                while at > 0 and at % PREFIX:  # a match across two keys: look further
                    at = blob.find(prefix, at + 1)
                if at >= 0:
                    continue
            if second >= covered or (arrived and fill.fill_id in arrived):
                candidates.append((fill, key))
        lost = []
        for fill, key in candidates:  # rare: only fills that look lost get here
            prefix = key[:PREFIX]
            if self._anywhere(prefix):
                continue  # published under another time than the venue gives it now
            lost.append(fill)
            second = fill.executed_at_ns // _NS
            if second >= covered:
                self._remember(second, prefix)
        return lost

    def packed(self, max_bytes: int = CARRIED_BYTES) -> tuple[int, dict[int, bytes]]:
        """(covered_from_s, second -> packed prefixes) for the checkpoint: the newest seconds that
        fit `max_bytes`, and the cover that leaves (it starts at the oldest second carried when
        older ones did not fit)."""
        carried: dict[int, bytes] = {}
        room = max_bytes
        covered = self._covered_s
        for second in reversed(self._buckets):
            blob = self._buckets[second]
            room -= len(blob) + _SECOND_BYTES
            if room < 0:
                covered = second + 1
                break
            carried[second] = blob
        return covered, carried

    def _anywhere(self, prefix: bytes) -> bool:
        for blob in self._buckets.values():
            at = blob.find(prefix)
            while at > 0 and at % PREFIX:
                at = blob.find(prefix, at + 1)
            if at >= 0:
                return True
        return False

    def _remember(self, second: int, prefix: bytes) -> None:
        if second in self._buckets:
            self._buckets[second] += prefix
        else:
            self._insert(second, prefix)
        self._keys += 1

    def _insert(self, second: int, blob: bytes) -> None:
        buckets = self._buckets
        newest = next(reversed(buckets), None)
        buckets[second] = blob
        if newest is not None and second < newest:  # a lost fill older than the newest second: rare
            self._buckets = dict(sorted(buckets.items()))

    def _drop_oldest(self, keep: int) -> None:
        buckets = self._buckets
        while len(buckets) > 1:
            oldest = next(iter(buckets))
            count = len(buckets[oldest]) // PREFIX
            if self._keys - count < keep:
                return
            del buckets[oldest]
            self._keys -= count
            # no key was published in the seconds between this one and the next kept: still covered
            self._covered_s = oldest + 1
