"""The memory bound: fills fetched and not yet committed, across every sink of the process.

While Kafka is away nothing commits, and pollers that kept fetching would buffer without limit.
Every sink (one per shard this instance owns) counts its uncommitted fills here; once
`kafka.max_pending_fills` are waiting, :meth:`Backlog.wait_for_capacity` holds every poller back
until commits bring the count down. Nothing fetched is dropped: polling pauses instead.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge


class Backlog:
    """Uncommitted fills of the whole process, gauged, with a capacity gate for pollers."""

    def __init__(self, limit: int, gauge: Gauge):
        self._limit = limit
        self._gauge = gauge
        self._total = 0
        self._capacity = asyncio.Event()
        self._capacity.set()

    @property
    def total(self) -> int:
        return self._total

    def add(self, delta: int) -> None:
        """`delta` more (or, negative, fewer) fills wait for their commit."""
        self._total += delta
        self._gauge.set(self._total)
        if self._total >= self._limit:
            self._capacity.clear()
        else:
            self._capacity.set()

    async def wait_for_capacity(self) -> None:
        """Return once fewer than the limit of fetched fills await their commit."""
        await self._capacity.wait()
