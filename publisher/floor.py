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
  the source's `below_floor_keep` keys (ZLL: :data:`KEEP_PAGES` pages of `page_limit`; Kalshi:
  none) on top of those the window forgot last, and drops older seconds; a second is never split,
  the newest never dropped. The checkpoint carries its newest seconds (at most
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

The memory holds the keys themselves (the 16-byte objects the window held), in a set: a poll's
fills below the floor are looked up in one call, and a fill the venue now dates otherwise than
when it was published is still known. Beside the set, the keys in execution-second order say what
to drop first and what the checkpoint carries (the newest seconds, as the window's are carried).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Collection, Mapping, Sequence

from publisher.dedupe import KEY_SIZE
from publisher.event import FillEvent

_NS = 1_000_000_000
#: pages of keys (`page_limit` each) the memory keeps below the floor at least, beyond the keys the
#: window forgot last: a page is what ZLL's walk reads below the floor, and another one leaves room
#: for fills there that are no published keys (lost fills, dead letters dated by the poll, whole
#: seconds)
KEEP_PAGES = 2
#: the most the checkpoint carries of the memory (its newest seconds): far inside the smallest
#: record a checkpoint may use (`kafka.max_record_bytes` is at least 64 KiB), beside the rest of it
CARRIED_BYTES = 16 * 1024
#: msgpack framing of one second in the checkpoint at most (int key, bin header)
_SECOND_BYTES = 12


class BelowFloor:
    """The keys published in the newest seconds below a source's floor; see the module docstring.

    `covered_from_s`: the oldest second the memory covers (the first start's floor second, or what
    a checkpoint carried); `keep`: how many keys to keep at least; `packed`: second -> packed
    16-byte keys, as :meth:`packed` gives them.
    """

    __slots__ = ("_covered_s", "_keep", "_keys", "_largest", "_order", "_seconds")

    def __init__(self, covered_from_s: int, keep: int, packed: Mapping[int, bytes] | None = None):
        self._covered_s = covered_from_s
        self._keep = keep
        self._keys: set[bytes] = set()
        #: the most keys the set has held since it was built (a set never gives back its table)
        self._largest = 0
        #: every key, oldest second first, and the second of each
        self._order: list[bytes] = []
        self._seconds = array("q")
        for second, blob in sorted((packed or {}).items()):
            if len(blob) % KEY_SIZE:
                raise ValueError(f"corrupt below-floor memory for second {second}")
            if second >= covered_from_s:
                self._add(second, [blob[i : i + KEY_SIZE] for i in range(0, len(blob), KEY_SIZE)])

    def __len__(self) -> int:
        return len(self._order)

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
        added = 0
        for second in sorted(dropped):
            keys = dropped[second]
            self._add(second, keys)
            added += len(keys)
        self._drop_oldest(self._keep + added)

    def judge(self, below: Sequence[FillEvent], keys: Sequence[bytes],
              arrived: Collection[str] | None = None) -> list[FillEvent]:
        """The fills of `below` (all older than the floor; `keys` their dedupe keys) known never to
        have been published: not remembered, and either in a second the memory covers or among
        `arrived` (venue ids the adapter saw listed for the first time). Those in a covered second
        are remembered, so a later call does not return them again."""
        known = self._keys
        if known.issuperset(keys):  # the usual case: every one published
            return []
        covered = self._covered_s
        lost = []
        for fill, key in zip(below, keys, strict=True):
            if key in known:
                continue
            second = fill.executed_at_ns // _NS
            if second >= covered:
                lost.append(fill)
                self._add(second, [key])
            elif arrived and fill.fill_id in arrived:
                lost.append(fill)
        return lost

    def packed(self, max_bytes: int = CARRIED_BYTES) -> tuple[int, dict[int, bytes]]:
        """(covered_from_s, second -> packed keys) for the checkpoint: the newest seconds that fit
        `max_bytes`, and the cover that leaves (it starts at the oldest second carried when older
        ones did not fit)."""
        seconds, order = self._seconds, self._order
        carried: dict[int, bytes] = {}
        room = max_bytes
        covered = self._covered_s
        end = len(seconds)
        while end:
            second = seconds[end - 1]
            start = bisect.bisect_left(seconds, second, 0, end)
            room -= (end - start) * KEY_SIZE + _SECOND_BYTES
            if room < 0:
                covered = second + 1
                break
            carried[second] = b"".join(order[start:end])
            end = start
        return covered, carried

    def _add(self, second: int, keys: list[bytes]) -> None:
        seconds = self._seconds
        self._keys.update(keys)
        self._largest = max(self._largest, len(self._keys))
        if not seconds or seconds[-1] <= second:
            self._order += keys
            seconds.extend([second] * len(keys))
            return
        at = bisect.bisect_right(seconds, second)  # a lost fill older than the newest second: rare
        self._order[at:at] = keys
        seconds[at:at] = array("q", [second] * len(keys))

    def _drop_oldest(self, keep: int) -> None:
        seconds, order = self._seconds, self._order
        while seconds:
            oldest = seconds[0]
            count = bisect.bisect_right(seconds, oldest)
            if count == len(seconds) or len(seconds) - count < keep:
                break
            self._keys.difference_update(order[:count])
            del order[:count]
            del seconds[:count]
            # no key was published in the seconds between this one and the next kept: still covered
            self._covered_s = oldest + 1
        if 4 * len(self._keys) < self._largest:  # after a burst (an outage, a lowered lookback)
            self._keys = set(self._keys)
            self._largest = len(self._keys)
