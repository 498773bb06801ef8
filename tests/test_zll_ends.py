"""ZLL's ends of the list: which fills the venue lists now that it did not list at the previous poll.

A fill first listed below the poll's floor was never published (a poll publishes what it lists
inside the window), however old it is. The adapter keeps a few ids from each end of the list in
its paging state and names, among the fills beyond them, those older than `since_ns`
(`FetchResult.arrived_below`). Over httpx.MockTransport, with lists in insertion order (newest and
oldest first) and sorted by time; a view of an end is trusted only once a second poll agrees with
it, so a first start, an odd answer or a list turned round never names fills that were there.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from publisher.venues import zll
from publisher.venues.results import FetchResult
from tests.test_zll_adapter import NOW, FakeZll, T, adapter, fill

SINCE = T + 1_000_000  # the window's floor in these tests: fills at T + 1000 * n are older for n < 1000


class Listed(FakeZll):
    """A ZLL list in insertion order (`stored`: oldest first) or its reverse (`newest`), whose
    fills can be removed, hidden at the end (`hide`: the last n of the insertion order) or turned
    round (`reverse`)."""

    def __init__(self, order: str, count: int, start: int = 0):
        self.newest = order == "newest"
        self.hide = 0
        self.reverse = False
        self.added = 0  # ids stay unique when fills are removed
        super().__init__([T + (start + i) * 1000 for i in range(count)], "stored")

    def add(self, time: int) -> dict[str, Any]:
        item = fill(self.added, time)
        self.added += 1
        self.fills.append(item)
        return item

    def served(self) -> list[dict[str, Any]]:
        items = self.fills[: len(self.fills) - self.hide]
        if self.newest != self.reverse:
            items = items[::-1]
        return items


async def poll(made: zll.ZllAdapter, venue: FakeZll, state: Any, since: int = SINCE) -> FetchResult:
    venue.requests.clear()
    return await made.fetch(since, state, lambda: NOW + 1)


@pytest.mark.parametrize("order", ["newest", "oldest"])
async def test_a_fill_first_listed_below_the_floor_is_named_once(order: str) -> None:
    venue = Listed(order, 23)  # all older than the floor: a quiet source's history
    made = adapter(venue)
    first = await poll(made, venue, None)
    assert first.arrived_below is None  # nothing to compare with
    second = await poll(made, venue, first.paging_state)
    assert second.arrived_below is None  # the first view of the ends is only now confirmed
    state = second.paging_state
    assert state["head" if order == "newest" else "tail"]["confirmed"]  # the end where fills arrive
    new = venue.add(SINCE + 5)["id"]
    late = venue.add(T + 500)["id"]  # executed long ago, listed now
    third = await poll(made, venue, state)
    assert third.arrived_below == {late}  # the new one is inside the window: published, not named
    assert {new, late} <= {f.fill_id for f in third.fills}
    fourth = await poll(made, venue, third.paging_state)
    assert fourth.arrived_below is None  # listed before: named once


@pytest.mark.parametrize("order", ["newest", "oldest"])
async def test_the_paging_state_keeps_three_ids_from_each_end(order: str) -> None:
    venue = Listed(order, 12, start=1000)  # all inside the window: the walk reads the whole list
    made = adapter(venue)
    state = (await poll(made, venue, None)).paging_state
    ids = [f["id"] for f in venue.served()]
    assert state == {"head": {"ids": ids[:3], "confirmed": False}, "tail": {"ids": ids[-3:], "confirmed": False}}
    again = (await poll(made, venue, state)).paging_state
    assert again == {"head": {"ids": ids[:3], "confirmed": True}, "tail": {"ids": ids[-3:], "confirmed": True}}


async def test_an_end_is_still_known_when_one_of_its_fills_is_removed() -> None:
    venue = Listed("newest", 20)
    made = adapter(venue)
    state = (await poll(made, venue, (await poll(made, venue, None)).paging_state)).paging_state
    del venue.fills[-1]  # the newest fill, the first id kept at the head
    late = venue.add(T + 100)["id"]
    result = await poll(made, venue, state)
    assert result.arrived_below == {late}
    assert result.paging_state["head"]["confirmed"]


@pytest.mark.parametrize("order", ["newest", "oldest"])
async def test_a_shorter_answer_once_names_nothing_when_the_list_is_whole_again(order: str) -> None:
    venue = Listed(order, 40)
    made = adapter(venue)
    state = (await poll(made, venue, (await poll(made, venue, None)).paging_state)).paging_state
    venue.hide = 15  # the venue leaves out its 15 newest fills once
    odd = await poll(made, venue, state)
    assert odd.arrived_below is None
    venue.hide = 0  # they are back: listed before, all older than the floor, not arrivals
    back = await poll(made, venue, odd.paging_state)
    assert back.arrived_below is None
    after = await poll(made, venue, back.paging_state)
    assert after.arrived_below is None and after.paging_state["head"]["confirmed"]
    late = venue.add(T + 10)["id"]
    assert (await poll(made, venue, after.paging_state)).arrived_below == {late}


async def test_a_list_turned_round_names_nothing() -> None:
    venue = Listed("newest", 30)
    made = adapter(venue)
    state = (await poll(made, venue, (await poll(made, venue, None)).paging_state)).paging_state
    venue.reverse = True  # now oldest first: the ids kept at each end stand at the other, reversed
    turned = await poll(made, venue, state)
    assert turned.arrived_below is None
    assert not turned.paging_state["head"]["confirmed"] and not turned.paging_state["tail"]["confirmed"]
    assert (await poll(made, venue, turned.paging_state)).arrived_below is None


async def test_a_sorted_list_names_only_fills_beyond_its_newest() -> None:
    venue = FakeZll([T + i * 1000 for i in range(30)], "desc")  # quiet: every fill older than the floor
    made = adapter(venue)
    state = (await poll(made, venue, (await poll(made, venue, None)).paging_state)).paging_state
    middle = venue.add(T + 10 * 1000 + 1)["id"]  # sorted into the list: no end tells it apart
    beyond = venue.add(T + 40 * 1000)["id"]  # newer than every fill listed: at the head
    result = await poll(made, venue, state)
    assert result.arrived_below == {beyond}
    # sorted deep into the list, beyond the one page read below the floor: the audit's to find
    assert middle not in {f.fill_id for f in result.fills}


async def test_an_older_paging_state_still_resumes_and_gains_the_ends() -> None:
    venue = FakeZll([T + i * 1000 for i in range(50)], "asc")
    since = T + 40 * 1000
    result = await adapter(venue).fetch(since, {"resume_offset": 30}, lambda: NOW + 1)
    assert venue.offsets()[0] == 30  # resumed
    assert result.arrived_below is None
    assert result.paging_state["resume_offset"] == 35 and "tail" in result.paging_state
    assert "head" not in result.paging_state  # the walk did not read the start of the list


async def test_an_empty_list_has_no_ends_and_its_first_fills_are_no_arrivals() -> None:
    venue = Listed("newest", 0)
    made = adapter(venue)
    empty = await poll(made, venue, None)
    assert empty.paging_state is None
    venue.add(T + 1)
    first = await poll(made, venue, empty.paging_state)
    assert first.arrived_below is None and not first.paging_state["head"]["confirmed"]


@pytest.mark.parametrize("seed", range(150))
async def test_random_arrivals_each_late_one_named_once_and_nothing_read_before(seed: int) -> None:
    rng = random.Random(seed)
    order = rng.choice(["newest", "oldest"])
    limit = rng.choice([3, 5, 8, 20])
    clock = 1000

    def now() -> int:
        return T + clock * 1000

    venue = Listed(order, 0)
    # the history in the order it arrived: by time, a few late within the window (a list whose
    # oldest fills arrived newest first can look newest-first from its first page: docs/limits.md)
    for at in sorted(rng.randrange(clock) for _ in range(rng.randrange(0, 60))):
        venue.add(T + max(0, at - (rng.randrange(50) if rng.random() < 0.2 else 0)) * 1000)
    made = adapter(venue, page_limit=limit)

    def arrive(v: FakeZll) -> None:
        for _ in range(rng.randrange(0, 3)):
            # a new fill, or one late by up to twice the window (listed in insertion order all the same)
            v.add(now() if rng.random() < 0.6 else now() - rng.randrange(200) * 1000)

    state: Any = None
    read: set[str] = set()  # every fill some poll returned
    listed: set[str] = set()  # the fills listed when the previous poll started
    named: list[str] = []
    for turn in range(8):
        clock += rng.randrange(0, 30)
        since = now() - 100 * 1000
        venue.requests.clear()
        venue.before = {n: arrive for n in range(2, 40) if rng.random() < 0.3}
        starting = {f["id"] for f in venue.fills}
        result = await made.fetch(since, state, lambda: NOW + 1)
        got = {f.fill_id for f in result.fills}
        # the window, whatever the order: every fill of it listed now, unless a poll read it before
        assert (venue.ids_since(since) & starting) - read <= got, (seed, turn)
        arrived = result.arrived_below or set()
        assert not arrived & read, (seed, turn)  # a fill read before is never an arrival
        assert arrived <= got and all(f.executed_at_ns < since for f in result.fills if f.fill_id in arrived)
        confirmed = state is not None and state.get("head" if order == "newest" else "tail", {}).get("confirmed")
        if confirmed:
            # every fill older than the floor that is read now, and was neither read before nor
            # listed when the previous poll started, arrived since
            late = {f.fill_id for f in result.fills
                    if f.fill_id not in read | listed and f.executed_at_ns < since}
            assert late <= arrived, (seed, turn, order, limit)
        named += arrived
        read |= got
        listed = starting
        state = result.paging_state
        venue.before = {}
        arrive(venue)  # between polls too
    assert len(named) == len(set(named))


async def test_a_late_fill_ending_a_page_no_longer_hides_the_fills_after_it() -> None:
    venue = Listed("newest", 10, start=1000)  # inside the window
    made = adapter(venue, page_limit=3)
    state = (await poll(made, venue, (await poll(made, venue, None)).paging_state)).paging_state
    hidden = venue.add(SINCE + 50)["id"]  # new, inside the window
    late = venue.add(T + 7)["id"]  # then a late one, and two more new ones: page 0 is [new, new, late]
    venue.add(SINCE + 60)
    venue.add(SINCE + 70)
    result = await poll(made, venue, state)
    # the page looks newest-first and reaches below the floor, but the ids the previous poll saw
    # first are further on: the walk goes on, meets the newer fill and reads the list through
    assert venue.offsets()[:2] == [0, 3]
    assert hidden in {f.fill_id for f in result.fills}
    assert result.arrived_below == {late}
