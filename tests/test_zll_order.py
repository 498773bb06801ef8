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


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_new_fills_are_published_whatever_order_the_first_pages_suggest(order: str) -> None:
    # oldest first, the list opens with times that fall (it looks newest-first) and grows at its
    # tail; newest first, it opens with times that rise (it looks oldest-first) and grows at its head
    now = [time.time_ns()]
    async with ZllSimulator(api_key=API_KEY, order=order, listing="insertion", seed=11,  # type: ignore[arg-type]
                            clock_ns=lambda: now[0]) as sim:
        # the history, added newest first and all older than the window
        for i in range(45):
            sim.add_fills(1, executed_at_ns=now[0] - (3600 + i) * NS, subaccount_index=0)
        source = zll.ZllSource(name="zll-reversed", base_url=sim.url, api_key_env="UNUSED", subaccount_index=0,
                               page_limit=10, lookback_s=LOOKBACK_S, poll_interval_s=INTERVAL_S,
                               max_requests_per_s=1000)
        adapter = zll.create_adapter(source, Secret(API_KEY), httpx.AsyncHTTPTransport(), lambda: None)
        metrics = Metrics()
        sink = Sink()
        poller = Poller(source, adapter, SourceState(source, None, now[0]), sink,  # type: ignore[arg-type]
                        metrics.source("zll", "zll-reversed"), wall_clock_ns=lambda: now[0])
        try:
            for _ in range(5):  # a quiet start: the list is read in the order its pages suggest
                assert await poller.poll_once() is None
                now[0] += INTERVAL_S * NS
            # new fills arrive, one per poll, for two lookback periods, then none for as long as
            # their discovery may take
            arrived: dict[str, int] = {}  # fill id -> the poll after which it arrived
            handed: dict[str, int] = {}  # fill id -> the poll that handed it over
            for poll in range(2 * LOOKBACK_S // INTERVAL_S + BOUND_POLLS):
                if poll < 2 * LOOKBACK_S // INTERVAL_S:
                    arrived[sim.add_fills(1, subaccount_index=0)[0].fill_id] = poll
                assert await poller.poll_once() is None
                handed.update((fill_id, poll) for fill_id in sink.fills if fill_id not in handed)
                now[0] += INTERVAL_S * NS
        finally:
            await adapter.aclose()
        assert set(arrived) <= set(handed)  # every one of them, each once
        assert len(sink.fills) == len(set(sink.fills))
        late = max(handed[fill_id] - poll for fill_id, poll in arrived.items())
        assert late <= BOUND_POLLS, late
        assert await poller.poll_once() is None  # and nothing was counted lost
        assert metrics.registry.get_sample_value("fillpub_fills_below_floor_total",
                                                 {"venue": "zll", "source": "zll-reversed"}) == 0
