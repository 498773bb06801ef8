"""ZLL's far end: whatever order the first pages suggest, a new fill is read within the stated bound.

Over httpx.MockTransport, with a wall clock that moves: lists sorted newest first and oldest
first, and lists in insertion order growing at the tail (oldest first) or at the head (newest
first), with histories that make the first pages lie (added in reverse), fills arriving while the
adapter pages and between polls. Every fill of the window is published (read by a poll whose
window holds it) within `lookback_s / LOOK_SHARE` and two polls of its arrival, no allowed order
ever fails a poll, a quiet source pays one request per look, and a list growing at both ends
fails loudly instead of being read in part.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from publisher.venues import zll
from publisher.venues.errors import ListOrderError, VenueError
from publisher.venues.results import FetchResult
from tests.test_zll_adapter import FakeZll, T, adapter, fill

NS = 1_000_000_000
LOOKBACK_S = 100
EVERY_S = LOOKBACK_S // zll.LOOK_SHARE


class Venue(FakeZll):
    """A ZLL list: `sorted-newest`, `sorted-oldest`, or in insertion order growing at the tail
    (`insertion-oldest`, served as held) or at the head (`insertion-newest`, served reversed)."""

    def __init__(self, kind: str):
        super().__init__([], {"sorted-newest": "desc", "sorted-oldest": "asc"}.get(kind, "stored"))  # type: ignore[arg-type]
        self.kind = kind
        self.arrived: dict[str, tuple[int, int]] = {}  # fill id -> (the clock it was listed at, its time)
        self.clock = T

    def arrive(self, time: int) -> dict[str, Any]:
        item = self.add(time)
        self.arrived[item["id"]] = (self.clock, time)
        return item

    def served(self) -> list[dict[str, Any]]:
        items = super().served()
        return items[::-1] if self.kind == "insertion-newest" else items


class Published:
    """The poll loop's window as the adapter asks it: the ids published, by id."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def keys(self, fill_ids: Sequence[str]) -> list[bytes]:
        return [fill_id.encode() for fill_id in fill_ids]

    def are_published(self, keys: Sequence[bytes]) -> list[bool]:
        return [key.decode() in self.done for key in keys]


def history(rng: random.Random, venue: Venue) -> None:
    """A history older than the first window, added oldest first, newest first (the first pages
    of an insertion-ordered list then lie about its order) or shuffled."""
    times = sorted(T - rng.randrange(LOOKBACK_S + 1, 5 * LOOKBACK_S) * NS for _ in range(rng.randrange(0, 70)))
    style = rng.choice(["forward", "reversed", "reversed", "shuffled"])
    if style == "reversed":
        times.reverse()
    elif style == "shuffled":
        rng.shuffle(times)
    for time in times:
        venue.add(time)


async def poll(made: zll.ZllAdapter, venue: Venue, state: Any, published: Published | None) -> FetchResult:
    venue.requests.clear()
    result = await made.fetch(venue.clock - LOOKBACK_S * NS, state, lambda: venue.clock, published)
    if published is not None:
        published.done |= {f.fill_id for f in result.fills if f.executed_at_ns >= venue.clock - LOOKBACK_S * NS}
    return result


@pytest.mark.parametrize("seed", range(100))
async def test_every_order_publishes_each_new_fill_within_the_bound(seed: int) -> None:
    rng = random.Random(seed)
    kind = ["sorted-newest", "sorted-oldest", "insertion-oldest", "insertion-newest"][seed % 4]
    limit = rng.choice([2, 3, 5, 8, 20])
    max_step_s = rng.choice([1, 5, 10])
    venue = Venue(kind)
    history(rng, venue)
    made = adapter(venue, page_limit=limit, lookback_s=LOOKBACK_S)
    published = Published()
    bound_ns = (EVERY_S + 2 * max_step_s) * NS

    def arrive(v: FakeZll) -> None:
        assert isinstance(v, Venue)
        for _ in range(rng.randrange(0, 3)):
            # new, or late within the window; in a sorted list the late ones land inside it
            v.arrive(v.clock - (rng.randrange(LOOKBACK_S // 2) * NS if rng.random() < 0.3 else 0))

    state: Any = None
    for turn in range(40):
        busy = turn % 20 < 8  # busy spells and quiet ones
        venue.before = {n: arrive for n in range(2, 30) if busy and rng.random() < 0.2}
        result = await poll(made, venue, state, published)
        state = result.paging_state
        venue.before = {}
        if busy:
            arrive(venue)
        venue.clock += rng.randrange(1, max_step_s + 1) * NS
    for _ in range(EVERY_S // max_step_s + 3):  # quiet for as long as discovery may take
        state = (await poll(made, venue, state, published)).paging_state
        venue.clock += max_step_s * NS
    # a fill still inside the window when the bound has passed since it arrived was published
    due = {fill_id for fill_id, (at, time) in venue.arrived.items() if time >= at + bound_ns - LOOKBACK_S * NS}
    assert due <= published.done, (seed, kind, limit, sorted(due - published.done)[:3])


@pytest.mark.parametrize("kind", ["sorted-newest", "sorted-oldest", "insertion-oldest", "insertion-newest"])
@pytest.mark.parametrize("reversed_history", [False, True])
async def test_a_quiet_source_pays_one_request_per_look(kind: str, reversed_history: bool) -> None:
    venue = Venue(kind)
    times = [T - (LOOKBACK_S + 1 + i) * NS for i in range(500)]  # far older than the window
    for time in times if reversed_history else times[::-1]:
        venue.add(time)
    made = adapter(venue, page_limit=20, lookback_s=LOOKBACK_S)
    published = Published()
    state: Any = None
    for _ in range(4):  # a first start, and the looks it leads to: a first view, then confirmed
        state = (await poll(made, venue, state, published)).paging_state
        venue.clock += NS
    periods = 10
    counts = []
    for _ in range(periods * EVERY_S):  # a poll a second for ten look periods
        state = (await poll(made, venue, state, published)).paging_state
        counts.append(len(venue.requests))
        venue.clock += NS
    walk = Counter(counts).most_common(1)[0][0]  # a quiet poll's walk: a page or two
    looks = sum(counts) - len(counts) * walk
    assert periods - 1 <= looks <= periods + 1, (walk, Counter(counts))  # one request a look, no more


async def test_a_list_growing_at_both_ends_fails_loudly_then_is_read_whole() -> None:
    venue = Venue("insertion-newest")
    for i in range(60):  # added newest first, listed oldest first: resumed near the tail
        venue.add(T - (LOOKBACK_S + 1000 + i) * NS)
    made = adapter(venue, page_limit=10, lookback_s=LOOKBACK_S)
    state: Any = None
    for _ in range(3):
        state = (await poll(made, venue, state, None)).paging_state
        venue.clock += NS
    assert state["resume_offset"] > 0
    venue.clock += EVERY_S * NS  # the head is due for a look
    head = venue.arrive(venue.clock)  # listed first (newest first)
    venue.fills.insert(0, fill(999, venue.clock))  # and one listed last: both ends grew
    with pytest.raises(ListOrderError) as caught:
        await poll(made, venue, state, None)
    assert caught.value.reason == "decode" and caught.value.kind == "paging_loop"
    assert "both ends" in str(caught.value)
    assert isinstance(caught.value, VenueError)
    whole = await poll(made, venue, state, None)  # the retry reads the list whole
    assert venue.offsets() == list(range(0, len(venue.fills) + 1, 10))
    assert {head["id"], fill(999, 0)["id"]} <= {f.fill_id for f in whole.fills}


async def test_a_first_start_reads_the_window_fills_at_the_tail_a_newest_first_walk_skipped() -> None:
    venue = Venue("insertion-oldest")
    for i in range(40):  # added newest first: the first pages look newest-first
        venue.add(T - (LOOKBACK_S + 1 + i) * NS)
    window = [venue.add(T - i * NS)["id"] for i in range(5, 0, -1)]  # listed last, inside the window
    made = adapter(venue, page_limit=10, lookback_s=LOOKBACK_S)
    published = Published()
    first = await poll(made, venue, None, published)
    assert venue.offsets() == [0]  # taken for newest-first: the head only
    assert not set(window) & {f.fill_id for f in first.fills}
    venue.clock += NS
    await poll(made, venue, first.paging_state, published)  # the tail's first look: they are there
    assert set(window) <= published.done
    assert venue.offsets()[-5:] == [0, 10, 20, 30, 40]  # and the list is read whole


async def test_a_far_end_whose_kept_ids_are_gone_makes_the_poll_read_the_whole_list() -> None:
    venue = Venue("sorted-newest")
    for i in range(50):
        venue.add(T - (LOOKBACK_S + 1 + i) * NS)
    made = adapter(venue, page_limit=10, lookback_s=LOOKBACK_S)
    state: Any = None
    for _ in range(3):  # a first start, its first look at the tail, the confirming one
        state = (await poll(made, venue, state, None)).paging_state
        venue.clock += NS
    assert state["tail"]["confirmed"]
    del venue.fills[-5:]  # the venue drops its oldest fills: the ids kept at the tail are gone
    venue.clock += EVERY_S * NS
    result = await poll(made, venue, state, None)
    assert venue.offsets()[-5:] == [0, 10, 20, 30, 40]
    assert not result.paging_state["tail"]["confirmed"]
    assert result.paging_state["looks"]["tail"]["hot_until_ns"] > venue.clock  # looked at every poll for a while
