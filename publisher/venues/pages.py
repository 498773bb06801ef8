"""Reading a poll's pages: the fills of one poll gathered once each, in slices that leave the
event loop free, and fills already published skipped where that is cheaper than normalising them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from publisher.event import FillEvent
from publisher.venues.results import FetchResult, InvalidFill

T = TypeVar("T")


def same_values(first: FillEvent, later: FillEvent) -> bool:
    """Whether two copies of one fill carry the same venue values (`observed_at_ns` is ours)."""
    return first == later or msgspec.structs.replace(later, observed_at_ns=first.observed_at_ns) == first


#: fills handled between two yields to the event loop: a page of 1,000 handled in one go holds the
#: loop long enough that the Kafka transaction in flight (three round trips) and the other sources
#: wait behind it; the size was chosen by the latency bench (bench/README.md)
SLICE = 200


async def in_slices(items: Sequence[T]) -> AsyncIterator[tuple[int, Sequence[T]]]:
    """`(start, items[start:start + SLICE])` for every slice, yielding to the event loop between
    slices, so one big page does not hold the loop for long."""
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        yield start, items[start : start + SLICE]


def ends_new(known: Callable[[str], bool], first: str | None, last: str | None) -> bool:
    """Whether neither end of a page (the venue ids of its first and last fills) is published yet.

    While pages hold mostly new fills (a backlog), a page whose two ends are new is normalised
    whole without looking up every fill: fills already published show up at one end of a page
    (the overlap re-read follows the new fills, newest or oldest first), and the lookups would
    cost more than normalising the odd published fill in between, which the poll loop drops as
    a duplicate anyway.
    """
    return not ((first is not None and known(first)) or (last is not None and known(last)))


class FillCollector:
    """Gathers one poll's fills and invalid fills, keeping only the first of repeats.

    Paging while the venue inserts fills shows some fills on two pages; dropping them here keeps one
    poll's result free of repeats (the poll loop's dedupe would drop them anyway).
    """

    def __init__(self, paging_state: Any = None):
        self.result = FetchResult(paging_state=paging_state)
        self._seen: set[str] = set()
        #: fill id -> first copy, built on the first repeat only (repeats are rare)
        self._firsts: dict[str, FillEvent] | None = None

    def add(self, item: FillEvent | InvalidFill) -> bool:
        """Record a normalised fill or an invalid one; False (and nothing recorded) for a repeat.

        A repeat whose values differ from the first copy is recorded in
        :attr:`FetchResult.conflicts`.
        """
        key = item.fill_id if isinstance(item, FillEvent) else item.key
        if key in self._seen:
            if isinstance(item, FillEvent):
                self._check_repeat(item)
            return False
        self._seen.add(key)
        if isinstance(item, FillEvent):
            self.result.fills.append(item)
            if self._firsts is not None:
                self._firsts[key] = item
        else:
            self.result.invalid.append(item)
        return True

    def _check_repeat(self, later: FillEvent) -> None:
        if self._firsts is None:
            self._firsts = {fill.fill_id: fill for fill in self.result.fills}
        first = self._firsts.get(later.fill_id)
        if first is not None and not same_values(first, later):
            self.result.conflicts.append((first, later))

    def skip_known(self, key: str | None, known: Callable[[str], bool] | None) -> bool | None:
        """For a fill with venue id `key`: None when it must be decoded, else it is skipped
        unread, being a repeat within this poll (False) or one that `known` (the poll loop's
        dedupe) says was published (True, and counted in :attr:`FetchResult.known`)."""
        if key is None or known is None:
            return None
        if key in self._seen:
            return False
        if not known(key):
            return None
        self._seen.add(key)
        self.result.known += 1
        return True

    def skip_known_page(self, keys: Sequence[str | None], known: Callable[[str], bool]) -> list[bool | None]:
        """:meth:`skip_known` for every fill of a page, in order (one call instead of one per fill:
        a re-read page is mostly fills to skip)."""
        seen = self._seen
        verdicts: list[bool | None] = []
        counted = 0
        for key in keys:
            if key is None:
                verdicts.append(None)
            elif key in seen:
                verdicts.append(False)
            elif known(key):
                seen.add(key)
                counted += 1
                verdicts.append(True)
            else:
                verdicts.append(None)
        self.result.known += counted
        return verdicts

    async def skip_known_sliced(self, keys: Sequence[str | None], known: Callable[[str], bool]) -> list[bool | None]:
        """:meth:`skip_known_page` slice by slice (see :func:`in_slices`)."""
        verdicts: list[bool | None] = []
        async for _, part in in_slices(keys):
            verdicts += self.skip_known_page(part, known)
        return verdicts
