"""The shards this instance owns right now, each served by its own :class:`ShardRunner`.

Membership (:mod:`publisher.membership`) decides which shards those are and calls :meth:`take` and
:meth:`give_back`; this module runs them. A shard whose transactional id is lost (another instance
initialised its producer) is dropped at once and never retried: without a cluster that ends the
instance (exit 3, :attr:`Ownership.lost`), in a consumer group the group gives the shard to its
rightful owner. Any other failure of a shard (a config the cluster refuses) ends the instance too
(:attr:`Ownership.failure`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Iterable

from publisher.config import Settings
from publisher.metrics import Metrics
from publisher.shard_runner import Confirm, ShardRunner
from publisher.shards import ShardLayout
from publisher.sink import TransactionalIdLostError
from publisher.sink.backlog import Backlog

log = logging.getLogger(__name__)


class Ownership:
    """Runs the shards this instance owns (see the module docstring)."""

    def __init__(self, layout: ShardLayout, settings: Settings, metrics: Metrics, tls: ssl.SSLContext):
        #: set by the membership of a group: asks Kafka whether a shard is still ours before its
        #: producer is initialised (None without a cluster: the one shard is always ours)
        self.confirm: Confirm | None = None
        self.layout = layout
        self._settings = settings
        self._metrics = metrics
        self._tls = tls
        kafka = settings.config.kafka
        #: every shard's sink counts its uncommitted fills here: one memory bound for the process
        self.backlog = Backlog(kafka.max_pending_fills, metrics.pending_fills)
        self.runners: dict[int, ShardRunner] = {}
        self._tasks: dict[ShardRunner, asyncio.Task[None]] = {}
        #: set when the instance must end: a lost shard without a cluster, or any other failure
        self.ended = asyncio.Event()
        #: without a cluster: the loss of the one shard's transactional id (exit 3)
        self.lost: TransactionalIdLostError | None = None
        #: a failure that is not a loss (e.g. a ConfigError the broker's settings caused)
        self.failure: BaseException | None = None
        #: shards taken again with a new producer after failures, over every shard this instance ran
        self._rebuilds_before = 0
        #: lost or failed shards being stopped
        self._dropping: set[asyncio.Task[None]] = set()

    @property
    def owned(self) -> list[int]:
        return sorted(self.runners)

    @property
    def rebuilds(self) -> int:
        return self._rebuilds_before + sum(r.rebuilds for r in self.runners.values())

    def not_ready_reason(self) -> str | None:
        """What the first shard not serving yet waits for; None when every owned shard serves."""
        for number in self.owned:
            reason = self.runners[number].not_ready_reason()
            if reason is not None:
                return f"shard {number}: {reason}" if self.layout.grouped else reason
        return None

    def take(self, numbers: Iterable[int]) -> None:
        """Start taking the shards `numbers` (partitions beyond the shards hold nothing: skipped)."""
        for number in sorted(set(numbers)):
            shard = self.layout.shard(number)
            if shard is None or number in self.runners:
                continue
            runner = ShardRunner(shard, self._settings, self._metrics, self.backlog, self._tls,
                                 create_topics=not self.layout.grouped, confirm=self.confirm)
            self.runners[number] = runner
            task = asyncio.create_task(runner.run(), name=f"shard:{number}")
            task.add_done_callback(functools.partial(self._ended, runner))
            self._tasks[runner] = task
            if shard.sources and self.layout.grouped:
                log.info("taking shard %d (%s)", number, ", ".join(s.name for s in shard.sources))
        self._gauge()

    async def give_back(self, numbers: Iterable[int], budget_s: float) -> bool:
        """Give the shards `numbers` back (see :meth:`ShardRunner.give_back`), all at once, within
        about `budget_s`; True when every one committed everything it had fetched."""
        runners = [self.runners.pop(n) for n in sorted(set(numbers)) if n in self.runners]
        if not runners:
            return True
        self._gauge()
        results = await asyncio.gather(*(runner.give_back(budget_s) for runner in runners))
        for runner in runners:
            await self._forget(runner)
        return all(results)

    async def give_back_all(self, budget_s: float) -> bool:
        return await self.give_back(list(self.runners), budget_s)

    def _ended(self, runner: ShardRunner, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        number = runner.number
        if self.runners.get(number) is runner:
            del self.runners[number]
            self._gauge()
        if isinstance(error, TransactionalIdLostError):
            if self.layout.grouped:
                log.warning("shard %d lost: %s; dropped, nothing more is sent for it (the consumer group gives it "
                            "to the instance that took it)", number, error)
            else:
                self.lost = error
                self.ended.set()
        else:
            log.error("shard %d failed", number, exc_info=error)
            self.failure = error
            self.ended.set()
        dropping = asyncio.get_running_loop().create_task(self._drop(runner), name=f"drop:{number}")
        self._dropping.add(dropping)
        dropping.add_done_callback(self._dropping.discard)

    async def settle(self) -> None:
        """Wait until every lost or failed shard has stopped (it sends nothing more)."""
        while self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)

    async def _drop(self, runner: ShardRunner) -> None:
        await runner.drop()
        await self._forget(runner)

    async def _forget(self, runner: ShardRunner) -> None:
        """The shard's task is over: count its rebuilds, and (in a group) drop its sources'
        series, which the shard's next owner now reports."""
        task = self._tasks.pop(runner, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._rebuilds_before += runner.rebuilds
        if self.layout.grouped:
            for source in runner.shard.sources:
                self._metrics.forget_source(source.venue_name, source.name)

    def _gauge(self) -> None:
        self._metrics.shards_owned.set(len(self.runners))
