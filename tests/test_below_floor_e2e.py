"""Fills a venue lists later than `lookback_s` after their execution, end to end: the ZLL simulator
listing in insertion order (newest and oldest first) over real HTTP, `fill-publisher run` as a
child process and a Kafka-protocol broker.

The reviewer's report, with its times scaled down (lookback 30 s, the publisher running 40 s, fills
late by 35 s and 120 s): a fill late by a little more than the lookback was counted, one late by
far more vanished. Both are counted now, each once with a WARNING naming it, however long the
venue keeps listing them; and a new process restored from the checkpoint, facing the same list
(every fill published before and both lost ones), counts nothing.

Kalshi filters by `min_ts` (whole seconds, one second early) on its live and its historical tier:
below the floor it serves only the second before the floor's, which the memory always covers, so
a fill lost there is counted; one further below is never served (the audit's to find).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from publisher.embedded_broker import EmbeddedBroker
from publisher.metrics import Metrics
from publisher.poll import Poller
from publisher.secret import Secret
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator
from publisher.state import SourceState
from publisher.venues import kalshi
from publisher.venues.base import VenueAdapter
from publisher.venues.pages import PublishedFills
from publisher.venues.results import FetchResult
from tests.harness.delivery import assert_exactly_once, fill_id_header
from tests.harness.stack import PublisherProcess, Stack, wait_until

pytestmark = pytest.mark.integration

NS = 1_000_000_000
LOOKBACK_S = 3
SETTINGS = {"poll_interval_s": 0.25, "lookback_s": LOOKBACK_S, "page_limit": 20, "max_requests_per_s": 200,
            "timeout_s": 5}
BELOW = "below the overlap window's floor"


async def test_fills_late_beyond_the_lookback_are_counted_once_each_also_across_a_restart(
        broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    try:
        sims: dict[str, ZllSimulator] = {}
        for order in ("newest", "oldest"):
            sims[order] = await stack.zll(f"zll-{order}", order=order, listing="insertion", **SETTINGS)
            sims[order].add_fills(30, late_s=1)
        first_start_ns = time.time_ns()
        proc = stack.publisher().start()
        await proc.wait_ready()
        for sim in sims.values():  # fills keep arriving, a few late within the lookback
            sim.start_generator(20, late_fraction=0.2, late_max_s=1)
        await asyncio.sleep(LOOKBACK_S + 1.5)  # running for longer than the lookback
        lost: dict[str, list[str]] = {}
        for order, sim in sims.items():
            # below the floor by a little (the window keeps whole seconds: more than a second)
            near = sim.add_fills(1, late_s=LOOKBACK_S + 2)[0]
            far = sim.add_fills(1, late_s=120)[0]  # far below it, and below the first start's floor
            lost[order] = [near.fill_id, far.fill_id]
        for order in sims:
            await wait_until(lambda order=order: _below(proc, order, 2), f"zll-{order}: both late fills counted",  # type: ignore[misc]
                             timeout_s=15, context=proc.log_tail)
        await asyncio.sleep(2.0)  # the venue keeps listing them: still counted once
        for order in sims:
            assert await proc.metric("fillpub_fills_below_floor_total", source=f"zll-{order}") == 2
            for fill_id in lost[order]:
                lines = proc.log_lines(BELOW, fill_id)
                assert len(lines) == 1 and "WARNING" in lines[0] and f"zll-{order}" in lines[0], lines
        code, _ = await proc.terminate()
        assert code == 0, proc.log_tail()

        # a new process from the checkpoint, the venue still listing everything: no count
        logged = len(proc.logs())
        proc = stack.publisher().start()
        await proc.wait_ready()
        await asyncio.sleep(3.0)
        for order in sims:
            assert await proc.metric("fillpub_fills_below_floor_total", source=f"zll-{order}") == 0
        assert BELOW not in proc.logs()[logged:], proc.logs()[logged:][-3000:]
        for sim in sims.values():
            await sim.stop_generator()
        unlisted = {fill_id for ids in lost.values() for fill_id in ids}
        expected = {fill_id: entry for fill_id, entry in stack.expected(first_start_ns - LOOKBACK_S * NS).items()
                    if fill_id not in unlisted}
        records = await stack.wait_for_fills(expected)
        code, _ = await proc.terminate()
        assert code == 0, proc.log_tail()
        assert not unlisted & {fill_id_header(r) for r in records}  # lost: counted, never published
        assert_exactly_once(records, expected)
    finally:
        await stack.close()


async def _below(proc: PublisherProcess, order: str, count: int) -> bool:
    return await proc.metric("fillpub_fills_below_floor_total", source=f"zll-{order}") >= count


class _Recorded(VenueAdapter):
    """The Kalshi adapter, remembering every fill id it returned."""

    venue = "kalshi"

    def __init__(self, adapter: VenueAdapter):
        self.adapter = adapter
        self.returned: set[str] = set()

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Callable[[], int],
                    published: PublishedFills | None = None) -> FetchResult:
        result = await self.adapter.fetch(since_ns, paging_state, clock_ns, published)
        self.returned |= {fill.fill_id for fill in result.fills}
        return result


class _Sink:
    def __init__(self) -> None:
        self.fills: list[str] = []

    def submit(self, batch: Any) -> None:
        self.fills += [fill.fill_id for fill in batch.fills]


@pytest.mark.parametrize("tier", ["live", "historical"])
async def test_kalshi_serves_below_the_floor_only_the_second_before_it(tier: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    private_pem, public_pem = generate_key_pair()
    now = [time.time_ns() // NS * NS + NS // 2]  # the poll loop's clock; the venue's runs on
    # historical: every fill is on the historical endpoint only, from the start
    cutoff = now[0] + 3600 * NS if tier == "historical" else None
    async with KalshiSimulator(public_key=public_pem, key_id="floor-key", fills_cutoff_ns=cutoff, seed=3) as sim:
        source = kalshi.KalshiSource(name="kalshi-floor", base_url=sim.url, api_key_id="floor-key",
                                     private_key_env="UNUSED", lookback_s=10, page_limit=5, max_requests_per_s=1000)
        adapter = _Recorded(kalshi.create_adapter(source, Secret(private_pem.decode()), httpx.AsyncHTTPTransport(),
                                                  lambda: None))
        metrics = Metrics()
        sink = _Sink()
        poller = Poller(source, adapter, SourceState(source, None, now[0]), sink,  # type: ignore[arg-type]
                        metrics.source("kalshi", "kalshi-floor"), wall_clock_ns=lambda: now[0])
        published = sim.add_fills(6, executed_at_ns=now[0] - 4 * NS)
        for _ in range(30):  # 15 s: they are published, then below the floor
            assert await poller.poll_once() is None
            now[0] += NS // 2
        assert sorted(sink.fills) == sorted(f.fill_id for f in published)
        floor_s = poller.state.window.floor_ns // NS
        edge = sim.add_fills(1, executed_at_ns=(floor_s - 1) * NS + NS // 3)[0]  # the second before the floor's
        deep = sim.add_fills(1, executed_at_ns=(floor_s - 3) * NS)[0]  # further below
        served = set(adapter.returned)
        with caplog.at_level(logging.WARNING, logger="publisher.poll"):
            for _ in range(3):  # the floor stays in its second: the venue keeps serving the edge fill
                assert await poller.poll_once() is None
                now[0] += NS // 10
        await adapter.adapter.aclose()
    assert poller.state.window.floor_ns // NS == floor_s
    assert edge.fill_id in adapter.returned and deep.fill_id not in adapter.returned
    assert adapter.returned - served == {edge.fill_id}  # nothing else older than the floor
    assert metrics.registry.get_sample_value("fillpub_fills_below_floor_total",
                                             {"venue": "kalshi", "source": "kalshi-floor"}) == 1
    [line] = [r.getMessage() for r in caplog.records if BELOW in r.getMessage()]
    assert edge.fill_id in line
    if tier == "historical":
        assert sim.served["historical_fills"] >= 3
