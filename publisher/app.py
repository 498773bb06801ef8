"""The running service: wires config -> shards -> (per shard) pollers and sink, and owns the lifecycle.

1. serve /healthz, /readyz (503) and /metrics at once, so probes and scrapes work while waiting;
2. own shards (:mod:`publisher.membership`): with one shard (no cluster) the only shard at once;
   with `cluster.shards` > 1 this instance's share in the consumer group, as it changes;
3. each shard taken (:mod:`publisher.shard_runner`): initialise its transactional producer (fences
   any earlier owner, aborts its in-doubt transaction), then restore its sources' checkpoints with
   a read_committed consumer, only then poll; /readyz turns 200 once every owned shard polls.

SIGTERM/SIGINT: stop polling, commit what is queued, (in a group) leave it, exit 0 within 10 s.
Without a cluster, fencing by another instance exits 3 at once, publishing nothing more; in a
group a fenced shard is dropped (its new owner has it) and the instance carries on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import httpx

from publisher import __version__
from publisher.config import ConfigError, Settings
from publisher.endpoints import make_handler
from publisher.httpserver import HttpServer
from publisher.membership import GroupMembership
from publisher.metrics import Metrics
from publisher.ownership import Ownership
from publisher.poll import Poller
from publisher.shards import layout

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_FENCED = 3
#: SIGTERM: the contract gives 10 s to exit. Shards get this long to stop polling, commit and stop
#: their producers; the remainder covers process exit.
SHUTDOWN_BUDGET_S = 8.5


class Publisher:
    """One service instance. `serve()` runs it until `stop` is set or (without a cluster) its
    transactional id is lost."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)
        self.layout = layout(settings.config)
        self.metrics.shards_configured.set(len(self.layout.shards))
        # one TLS context (httpx's default: certifi CAs, verification on) for every source: one
        # each made a thousand sources' RSS several times larger (bench/README.md)
        self.ownership = Ownership(self.layout, settings, self.metrics, httpx.create_ssl_context())
        self.membership = GroupMembership(settings, self.ownership, self.metrics) if self.layout.grouped else None
        self.http: HttpServer | None = None

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """None when ready (/readyz 200), else what start-up waits for or what is wrong (its 503 body)."""
        if self.membership is not None:
            return self.membership.not_ready_reason()
        if not self.ownership.runners:
            return "waiting for Kafka: producer not initialised"
        return self.ownership.not_ready_reason()

    @property
    def pollers(self) -> list[Poller]:
        """The pollers of every shard this instance serves now."""
        return [p for n in self.ownership.owned for p in self.ownership.runners[n].pollers]

    @property
    def rebuilds(self) -> int:
        """Producers replaced after failures, over every shard this instance ran."""
        return self.ownership.rebuilds

    async def serve(self, stop: asyncio.Event) -> int:
        config = self.settings.config
        self.http = HttpServer(make_handler(self.metrics, self.not_ready_reason), config.http.host, config.http.port)
        await self.http.start()
        log.info("fill-publisher %s serving /metrics /healthz /readyz on %s", __version__, self.http.url)
        try:
            if self.membership is not None:
                await self.membership.run(stop, SHUTDOWN_BUDGET_S)
                return self._outcome()
            return await self._serve_alone(stop)
        finally:
            await self.ownership.give_back_all(1.0)
            await self.ownership.settle()
            await self.http.close()

    async def _serve_alone(self, stop: asyncio.Event) -> int:
        """Without a cluster: the one shard, until SIGTERM or the loss of its transactional id."""
        ownership = self.ownership
        ownership.take([0])
        stopped = asyncio.create_task(stop.wait(), name="stop")
        ended = asyncio.create_task(ownership.ended.wait(), name="ended")
        await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        ended.cancel()
        stopping_since = time.monotonic()
        outcome = self._outcome()
        if outcome == EXIT_FENCED:
            # a zombie must not publish: no grace, nothing more handed to Kafka
            await ownership.settle()
            log.critical("exiting with status %d: %s; fetched fills left to the instance that owns the "
                         "transactional id", EXIT_FENCED, ownership.lost)
            return EXIT_FENCED
        budget = max(1.0, SHUTDOWN_BUDGET_S - (time.monotonic() - stopping_since))
        await ownership.give_back_all(budget)
        return outcome

    def _outcome(self) -> int:
        """The exit status the shards' end calls for; raises the ConfigError that ended one."""
        ownership = self.ownership
        if ownership.lost is not None:
            return EXIT_FENCED
        if isinstance(ownership.failure, ConfigError):
            raise ownership.failure
        return EXIT_FAILED if ownership.failure is not None else EXIT_OK


def run(settings: Settings) -> int:
    """`fill-publisher run`: serve until SIGTERM/SIGINT; the process exit status."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await Publisher(settings).serve(stop)

    return asyncio.run(main())
