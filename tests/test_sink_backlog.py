"""The process-wide memory bound (publisher.sink.backlog): the gauge follows the uncommitted fills,
the capacity gate closes at the limit and opens below it, every waiting poller wakes, and the sinks
of one process share it. No producer is started: nothing here talks to Kafka.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from publisher.metrics import Metrics
from publisher.sink import SourceBatch, TransactionalSink
from publisher.sink.backlog import Backlog
from tests.test_sink_commit import KAFKA, fill


class Gauged:
    """A backlog with a gauge of its own registry, to read back."""

    def __init__(self, limit: int):
        self.registry = CollectorRegistry()
        self.backlog = Backlog(limit, Gauge("pending", "fills awaiting their commit", registry=self.registry))

    @property
    def gauge(self) -> float | None:
        return self.registry.get_sample_value("pending")


async def blocked(waiter: asyncio.Future[None] | asyncio.Task[None]) -> bool:
    """Whether `waiter` is still waiting once everything ready has run."""
    for _ in range(3):
        await asyncio.sleep(0)
    return not waiter.done()


def test_the_gauge_follows_the_uncommitted_fills() -> None:
    gauged = Gauged(limit=100)
    assert gauged.backlog.total == 0
    gauged.backlog.add(3)
    gauged.backlog.add(2)
    assert (gauged.backlog.total, gauged.gauge) == (5, 5.0)
    gauged.backlog.add(-4)  # a commit
    assert (gauged.backlog.total, gauged.gauge) == (1, 1.0)


async def test_the_gate_is_open_below_the_limit() -> None:
    gauged = Gauged(limit=3)
    gauged.backlog.add(2)
    await asyncio.wait_for(gauged.backlog.wait_for_capacity(), 0.5)


async def test_the_gate_closes_at_the_limit_and_opens_below_it() -> None:
    gauged = Gauged(limit=3)
    gauged.backlog.add(3)  # exactly `max_pending_fills` waiting: no more polling
    waiter = asyncio.ensure_future(gauged.backlog.wait_for_capacity())
    assert await blocked(waiter)
    gauged.backlog.add(-1)
    await asyncio.wait_for(waiter, 0.5)


async def test_a_submission_past_the_limit_keeps_the_gate_closed_until_the_total_is_below_it() -> None:
    gauged = Gauged(limit=3)
    gauged.backlog.add(10)  # one poll may bring more than the room left: nothing fetched is dropped
    waiter = asyncio.ensure_future(gauged.backlog.wait_for_capacity())
    gauged.backlog.add(-7)
    assert await blocked(waiter) and gauged.backlog.total == 3
    gauged.backlog.add(-1)
    await asyncio.wait_for(waiter, 0.5)


async def test_every_waiting_poller_wakes_when_capacity_returns() -> None:
    gauged = Gauged(limit=1)
    gauged.backlog.add(1)
    waiters = [asyncio.ensure_future(gauged.backlog.wait_for_capacity()) for _ in range(5)]
    assert all([await blocked(waiter) for waiter in waiters])
    gauged.backlog.add(-1)
    await asyncio.wait_for(asyncio.gather(*waiters), 0.5)


async def test_the_sinks_of_one_process_share_the_bound() -> None:
    """One sink per owned shard: a shard whose fills wait for Kafka holds back every poller, and
    a closed sink's uncommitted fills no longer count."""
    limit = 2
    metrics = Metrics()
    backlog = Backlog(limit, metrics.pending_fills)
    first, second = (TransactionalSink(KAFKA, None, metrics, backlog=backlog) for _ in range(2))
    first.submit(SourceBatch(source="a", venue="kalshi", fills=[fill("a", i) for i in range(limit)],
                             dead_letters=[], checkpoint=b""))
    waiter = asyncio.ensure_future(second.wait_for_capacity())
    assert await blocked(waiter) and metrics.registry.get_sample_value("fillpub_pending_fills") == limit
    assert not await first.close(None, 0.5)  # never started: its fills are abandoned, not committed
    await asyncio.wait_for(waiter, 0.5)
    assert backlog.total == 0 and first.pending_fills == limit
