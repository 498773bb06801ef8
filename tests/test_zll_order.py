"""ZLL lists whose first page suggests an order the rest of the list does not keep, over real HTTP.

ZLL documents no order. A list kept in insertion order, oldest first (new fills appended at the
end), whose oldest fills were added newest first (a history loaded in reverse) opens with pages
that look newest-first: a walk that trusts them reads the head and stops there on every poll,
and the fills arriving at the tail are never read. Newest first, the same history opens the list
with rising times: read as oldest-first, the walk resumes near the tail and never reads the head,
where the new fills are. Here the ZLL simulator serves such a list on
127.0.0.1 and the poll loop (:class:`~publisher.poll.Poller`, a fake wall clock shared with the
simulator) polls it through the real adapter: every new fill must reach the sink, within the bound
the adapter states (:data:`publisher.venues.zll.LOOK_SHARE`).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.secret import Secret
from publisher.sim.zll import ZllSimulator
from publisher.state import SourceState
from publisher.venues import zll

pytestmark = pytest.mark.integration

NS = 1_000_000_000
API_KEY = "c2VjcmV0LWFwaS1rZXktdmFsdWU="
LOOKBACK_S = 30
INTERVAL_S = 1
#: the polls a new fill may wait for at most: a look at the far end every lookback_s / LOOK_SHARE,
#: one poll more when it falls due just after the fill arrives
BOUND_POLLS = LOOKBACK_S // zll.LOOK_SHARE // INTERVAL_S + 1


class Sink:
    """What the poll loop hands over: the fill ids, in order."""

    def __init__(self) -> None:
        self.fills: list[str] = []

    def submit(self, batch: Any) -> None:
        self.fills += [fill.fill_id for fill in batch.fills]


class Reversed:
    """A ZLL simulator listing in insertion order (`order` first) a history added newest first,
    all older than the window, and a poll loop over the real adapter, sharing a fake wall clock."""

    def __init__(self, order: str):
        self.now = time.time_ns()
        self.sim = ZllSimulator(api_key=API_KEY, order=order, listing="insertion", seed=11,  # type: ignore[arg-type]
                                clock_ns=lambda: self.now)
        self.sink = Sink()
        self.metrics = Metrics()
        self.transport = httpx.AsyncHTTPTransport()

    async def __aenter__(self) -> Reversed:
        await self.sim.start()
        for i in range(45):
            self.sim.add_fills(1, executed_at_ns=self.now - (3600 + i) * NS, subaccount_index=0)
        source = zll.ZllSource(name="zll-reversed", base_url=self.sim.url, api_key_env="UNUSED", subaccount_index=0,
                               page_limit=10, lookback_s=LOOKBACK_S, poll_interval_s=INTERVAL_S,
                               max_requests_per_s=1000)
        adapter = zll.create_adapter(source, Secret(API_KEY), self.transport, lambda: None)
        self.poller = Poller(source, adapter, SourceState(source, None, self.now), self.sink,  # type: ignore[arg-type]
                             self.metrics.source("zll", "zll-reversed"), wall_clock_ns=lambda: self.now)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.transport.aclose()
        await self.sim.close()

    async def poll(self) -> None:
        """One poll, which must succeed, and a poll interval on."""
        assert await self.poller.poll_once() is None
        self.now += INTERVAL_S * NS

    def below_floor(self) -> float | None:
        return self.metrics.registry.get_sample_value("fillpub_fills_below_floor_total",
                                                      {"venue": "zll", "source": "zll-reversed"})


# oldest first, the list opens with times that fall (it looks newest-first) and grows at its tail;
# newest first, it opens with times that rise (it looks oldest-first) and grows at its head
@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_new_fills_are_published_whatever_order_the_first_pages_suggest(order: str) -> None:
    async with Reversed(order) as venue:
        for _ in range(5):  # a quiet start: the list is read in the order its pages suggest
            await venue.poll()
        # new fills arrive, one per poll, for two lookback periods, then none for as long as their
        # discovery may take
        arrived: dict[str, int] = {}  # fill id -> the poll after which it arrived
        handed: dict[str, int] = {}  # fill id -> the poll that handed it over
        for poll in range(2 * LOOKBACK_S // INTERVAL_S + BOUND_POLLS):
            if poll < 2 * LOOKBACK_S // INTERVAL_S:
                arrived[venue.sim.add_fills(1, subaccount_index=0)[0].fill_id] = poll
            await venue.poll()
            handed.update((fill_id, poll) for fill_id in venue.sink.fills if fill_id not in handed)
        await venue.poll()
        assert set(arrived) <= set(handed)  # every one of them, each once
        assert len(venue.sink.fills) == len(set(venue.sink.fills))
        late = max(handed[fill_id] - poll for fill_id, poll in arrived.items())
        assert late <= BOUND_POLLS, late
        assert venue.below_floor() == 0  # and nothing was counted lost


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_a_fill_late_beyond_the_lookback_at_the_unread_end_is_counted_lost_once(order: str) -> None:
    async with Reversed(order) as venue:
        for _ in range(5):  # a quiet start: the ends are seen and confirmed
            await venue.poll()
        lost = venue.sim.add_fills(1, late_s=2 * LOOKBACK_S, subaccount_index=0)[0].fill_id
        for _ in range(BOUND_POLLS + LOOKBACK_S):  # found by the next look, and never again
            await venue.poll()
        assert venue.below_floor() == 1
        assert lost not in venue.sink.fills
