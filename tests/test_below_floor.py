"""The poll loop's accounting of fills it does not publish: fills served below the window's floor
that were never published (counted once, with a WARNING), and a venue serving one fill id with
two sets of values (counted, the first logged)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from publisher.event import FillEvent, VenueFields
from publisher.floor import BELOW_FLOOR_MEMORY_S
from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.state import SourceState
from publisher.venues.base import VenueAdapter
from publisher.venues.results import FetchResult
from publisher.venues.zll import ZllSource

NS = 1_000_000_000
START = 1_800_000_000 * NS
LOOKBACK_S = 10


def event(n: int, at_ns: int, price: str = "1") -> FillEvent:
    return FillEvent(venue="zll", source="zll-unit", fill_id=f"fill-{n}", order_id="o", instrument="BTC-PERP",
                     side="buy", price=price, quantity="1", fee="0", fee_currency="USDC", liquidity="taker",
                     executed_at_ns=at_ns, observed_at_ns=at_ns, venue_fields=VenueFields())


class _Venue(VenueAdapter):
    """Serves `fills` (every one it ever had, as ZLL does: no time filter) on every poll."""

    venue = "zll"

    def __init__(self) -> None:
        self.fills: list[FillEvent] = []
        self.conflicts: list[tuple[FillEvent, FillEvent]] = []

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
        conflicts, self.conflicts = self.conflicts, []
        return FetchResult(fills=list(self.fills), conflicts=conflicts)


class _Sink:
    def __init__(self) -> None:
        self.fills: list[FillEvent] = []

    def submit(self, batch: Any) -> None:
        self.fills.extend(batch.fills)


def setup() -> tuple[Poller, _Venue, _Sink, Metrics, list[int]]:
    now = [START]
    source = ZllSource(name="zll-unit", base_url="http://127.0.0.1:9", subaccount_index=0, api_key_env="UNUSED",
                       lookback_s=LOOKBACK_S)
    venue, sink, metrics = _Venue(), _Sink(), Metrics()
    poller = Poller(source, venue, SourceState(source, None, now[0]), sink,  # type: ignore[arg-type]
                    metrics.source("zll", "zll-unit"), wall_clock_ns=lambda: now[0])
    return poller, venue, sink, metrics, now


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"venue": "zll", "source": "zll-unit"}) or 0.0


async def test_fills_below_the_floor_never_published_are_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, sink, metrics, now = setup()
    venue.fills = [event(i, START - 2 * NS + i) for i in range(5)]  # inside the first window
    for _ in range(30):  # 15 s of polls: the window moves past those five fills
        assert await poller.poll_once() is None
        now[0] += NS // 2
    assert len(sink.fills) == 5
    assert sample(metrics, "fillpub_fills_below_floor_total") == 0  # published, then forgotten: fine
    floor = poller.state.window.floor_ns
    # a fill that shows up later than lookback_s allows: below the floor and never published
    late = event(99, floor - 3 * NS)
    ancient = event(98, START - (LOOKBACK_S + BELOW_FLOOR_MEMORY_S + 60) * NS)  # before this process' window
    venue.fills += [late, ancient]
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        for _ in range(4):
            assert await poller.poll_once() is None
            now[0] += NS // 2
    assert sample(metrics, "fillpub_fills_below_floor_total") == 1
    warnings = [r.getMessage() for r in caplog.records if "below the overlap window's floor" in r.getMessage()]
    assert len(warnings) == 1 and "fill-99" in warnings[0]
    assert late not in sink.fills


async def test_conflicting_copies_are_counted_and_the_first_logged(caplog: pytest.LogCaptureFixture) -> None:
    poller, venue, sink, metrics, now = setup()
    first = event(1, START - NS)
    venue.fills = [first]
    venue.conflicts = [(first, msgspec.structs.replace(first, price="2")),
                       (first, msgspec.structs.replace(first, price="3"))]
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        assert await poller.poll_once() is None
        now[0] += NS
        venue.conflicts = [(event(1, START - NS), event(1, START - NS, "4"))]  # fill 1 is published already
        assert await poller.poll_once() is None
    assert sink.fills == [first]
    assert sample(metrics, "fillpub_fills_conflicting_total") == 2
    [line] = [r.getMessage() for r in caplog.records if "twice with different values" in r.getMessage()]
    assert "fill-1" in line and "@ 1 " in line and "@ 2 " in line
