"""One shard this instance owns: take it, poll its sources, give it back.

Taking a shard, in this order (exactly once rests on it):
1. initialise the shard's transactional producer, retrying until Kafka answers: its
   InitProducerId fences every earlier owner of the shard's transactional id and makes the
   coordinator abort what that owner left open;
2. without a cluster only: create missing topics (with a cluster the instance did before joining);
3. read the shard's checkpoints read_committed, up to the last stable offset that step 1 freed;
4. poll the shard's sources, committing through the shard's sink.

Giving it back (a rebalance moves it, or SIGTERM): stop polling (a short grace for polls under way,
which have queued nothing yet), commit what is queued within the time given, close the producer.
Whatever is not committed then is fetched again by the next owner: its checkpoint did not move.

Losing it (another instance initialised the shard's producer: fencing) ends :meth:`run` with
:class:`~publisher.sink.TransactionalIdLostError` at once; :meth:`drop` then sends nothing more.

Its producer failing in a way an abort cannot repair (:class:`~publisher.sink.ProducerStateLost`)
makes the runner take the shard again from step 1. Only a take initialises the shard's
transactional id, and every take restores after that: an instance that was frozen while another
took the shard, and thaws to find its transaction timed out, restores what the other committed
before it writes anything, instead of writing from its own stale state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from publisher.checkpoint import Checkpoint, read_checkpoints
from publisher.config import Settings, fills_topic
from publisher.kafkaclient import consumer_options, ensure_topics
from publisher.metrics import Metrics
from publisher.poll import Backoff, Poller
from publisher.shards import Shard
from publisher.sink import ProducerStateLost, TransactionalSink
from publisher.sink.backlog import Backlog
from publisher.state import SourceState
from publisher.venues import VENUES
from publisher.venues.transport import SourceTransport

log = logging.getLogger(__name__)

#: asks the consumer group whether this instance still owns a shard (by number)
Confirm = Callable[[int], Awaitable[bool]]

#: of the time given to give a shard back, how long polls under way may take to finish
POLL_GRACE_S = 1.5


class ShardRunner:
    """Takes, runs and gives back one shard (see the module docstring)."""

    def __init__(self, shard: Shard, settings: Settings, metrics: Metrics, backlog: Backlog, tls: ssl.SSLContext,
                 *, create_topics: bool, confirm: Confirm | None = None):
        self.shard = shard
        self._settings = settings
        self._metrics = metrics
        self._tls = tls
        self._create_topics = create_topics
        self._confirm = confirm
        #: the group says the shard is no longer ours: it waits to be given back
        self._disowned = False
        self._backlog = backlog
        self.sink = self._new_sink()
        #: times the shard was taken again because its producer had to be replaced
        self.rebuilds = 0
        self.pollers: list[Poller] = []
        #: checkpoints are restored and the sources poll
        self.restored = False
        self._stop = asyncio.Event()
        self._sink_task: asyncio.Task[None] | None = None
        self._poll_tasks: list[asyncio.Task[None]] = []
        self._transports: list[SourceTransport] = []

    @property
    def number(self) -> int:
        return self.shard.number

    @property
    def _grouped(self) -> bool:
        return self.shard.checkpoint_partition is not None

    @property
    def _name(self) -> str:
        return f"shard {self.shard.number}" if self._grouped else f"transactional id {self.shard.transactional_id}"

    def _new_sink(self) -> TransactionalSink:
        settings = self._settings
        return TransactionalSink(settings.config.kafka, settings.sasl_password, self._metrics,
                                 transactional_id=self.shard.transactional_id,
                                 checkpoint_partition=self.shard.checkpoint_partition,
                                 ssl_key_password=settings.ssl_key_password, backlog=self._backlog)

    def not_ready_reason(self) -> str | None:
        """None once the shard polls and commits, else what it waits for."""
        if not self.shard.sources:
            return None
        if self._disowned:
            return "no longer ours in the consumer group: waiting for the rebalance"
        if not self.restored:
            # the sink turns healthy once its producer is initialised, the step before the restore
            return "restoring checkpoints" if self.sink.healthy else "waiting for Kafka: producer not initialised"
        if not self.sink.healthy:
            return "Kafka unavailable: the last transaction failed or is taking too long"
        return None

    async def run(self) -> None:
        """Take the shard and serve it until :meth:`give_back` (returns) or the shard's
        transactional id is lost (raises TransactionalIdLostError). Raises ConfigError when the
        cluster refuses the config (the broker's transaction timeout). Whenever the sink's producer
        must be replaced (:class:`~publisher.sink.ProducerStateLost`), the shard is taken again:
        a new producer, checkpoints restored after it started, the sources' recent fills read again."""
        if not self.shard.sources:
            # a shard no source hashes to: nothing to publish, no producer needed
            self.restored = True
            await self._stop.wait()
            return
        while True:
            if not await self._take():
                return
            assert self._sink_task is not None
            try:
                await self._sink_task  # ends when give_back() closes the sink
                return
            except ProducerStateLost as exc:
                if self._stop.is_set():
                    return
                self.rebuilds += 1
                log.warning("%s: %s; taking it again: a new producer, checkpoints restored from Kafka, the sources' "
                            "recent fills read again (%d times so far)", self._name, exc, self.rebuilds)
                await self._reset()

    async def _take(self) -> bool:
        """Producer, checkpoints, pollers; False when stopped first."""
        if self._stop.is_set():
            return False  # given back already: the shard may be another instance's by now
        if not await self._still_ours():
            return False
        try:
            await self.sink.start(self._stop)
        except asyncio.CancelledError:
            if self._stop.is_set():
                return False
            raise
        checkpoints = await self._restore()
        if checkpoints is None:
            return False
        self._build_pollers(checkpoints)
        self._sink_task = asyncio.create_task(self.sink.run(), name=f"sink:{self.shard.transactional_id}")
        self._poll_tasks = [asyncio.create_task(p.run(self._stop), name=f"poll:{p.source.name}")
                            for p in self.pollers]
        self.restored = True
        log.info("%sready: %d sources polling", f"shard {self.shard.number} " if self._grouped else "",
                 len(self.pollers))
        return True

    async def _still_ours(self) -> bool:
        """In a group, ask Kafka whether the shard is still ours before initialising its producer
        (see :meth:`~publisher.membership.GroupMembership.confirm`); when it is not, wait to be
        given back (the group's rebalance is under way) and return False."""
        if self._confirm is None:
            return True
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        while not self._stop.is_set():
            try:
                if await self._confirm(self.shard.number):
                    return True
            except Exception as exc:  # noqa: BLE001 - Kafka cannot tell yet: ask again
                delay = backoff.next_delay()
                log.warning("%s: cannot confirm with the consumer group that it is still ours (%s: %s); asking again "
                            "in %.1fs", self._name, type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            self._disowned = True
            log.warning("%s is no longer this instance's in the consumer group (evicted, or a rebalance under way): "
                        "not taking it; it is given back when the group revokes it", self._name)
            await self._stop.wait()
        return False

    async def _reset(self) -> None:
        """Forget everything since the last take: pollers stopped at once (what they fetched is
        fetched again), the sink's uncommitted batches abandoned, a new unstarted sink."""
        self.restored = False
        for task in self._poll_tasks:
            task.cancel()
        await asyncio.gather(*self._poll_tasks, return_exceptions=True)
        self._poll_tasks = []
        self.pollers = []
        await self.sink.close(None, 0.5)
        await self._close_transports()
        self.sink = self._new_sink()
        self._sink_task = None

    async def _restore(self) -> dict[str, Checkpoint] | None:
        """Create topics (without a cluster) and read checkpoints, retrying until it works (None:
        stopped first)."""
        settings = self._settings
        kafka = settings.config.kafka
        sources = self.shard.sources
        if self._create_topics and kafka.create_topics:
            self._create_topics = False  # once: a shard taken again finds them
            venues = sorted({s.venue_name for s in settings.config.sources})
            await ensure_topics(kafka, settings.sasl_password, [fills_topic(kafka, v) for v in venues],
                                ssl_key_password=settings.ssl_key_password)
        partition = self.shard.checkpoint_partition
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        while not self._stop.is_set():
            try:
                found = await asyncio.wait_for(
                    read_checkpoints(kafka.checkpoint_topic, [s.name for s in sources],
                                     consumer_options(kafka, settings.sasl_password, settings.ssl_key_password),
                                     partitions=None if partition is None else [partition]),
                    timeout=max(30.0, kafka.request_timeout_s * 2),
                )
            except Exception as exc:  # noqa: BLE001 - any failure: retry; polling must not start
                self._metrics.publish_errors.labels(reason="checkpoint_restore").inc()
                delay = backoff.next_delay()
                log.warning("restoring checkpoints failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            for source in sources:
                checkpoint = found.get(source.name)
                if checkpoint is not None and checkpoint.venue != source.venue_name:
                    log.warning("source %s: checkpoint belongs to venue %s, not %s; starting fresh",
                                source.name, checkpoint.venue, source.venue_name, extra={"source": source.name})
                    found.pop(source.name)
                elif checkpoint is None:
                    first = (f"publishing fills since backfill_from {source.backfill_from}"
                             if source.backfill_from is not None
                             else f"publishing fills of the last {source.lookback_s:g}s")
                    log.warning("source %s: no checkpoint in %s; first start, %s",
                                source.name, kafka.checkpoint_topic, first, extra={"source": source.name})
            return found
        return None

    def _build_pollers(self, checkpoints: dict[str, Checkpoint]) -> None:
        settings = self._settings
        now_ns = time.time_ns()
        for source in self.shard.sources:
            transport = SourceTransport(source.base_url, self._tls)
            self._transports.append(transport)
            source_metrics = self._metrics.source(source.venue_name, source.name)
            adapter = VENUES.of(source).adapter(
                source, settings.source_secrets[source.name], transport, source_metrics.requests.inc
            )
            state = SourceState(source, checkpoints.get(source.name), now_ns)
            self.pollers.append(Poller(source, adapter, state, self.sink, source_metrics))

    async def give_back(self, budget_s: float) -> bool:
        """Stop polling, commit what is queued and close the producer within about `budget_s`;
        True when everything fetched was committed. Safe to call at any stage of :meth:`run`."""
        started = time.monotonic()
        self._stop.set()
        if self._poll_tasks:
            # a poll still waiting on the venue after the grace is abandoned: it queued nothing yet
            _, late = await asyncio.wait(self._poll_tasks, timeout=min(POLL_GRACE_S, budget_s / 3))
            for task in late:
                task.cancel()
            await asyncio.gather(*self._poll_tasks, return_exceptions=True)
        pending = self.sink.pending_fills
        remaining = max(1.0, budget_s - (time.monotonic() - started))
        sink_task = self._sink_task
        drained = await self.sink.close(sink_task, remaining)
        failed = sink_task.exception() if sink_task is not None and sink_task.done() and not sink_task.cancelled() \
            else None
        await self._close_transports()
        if not self.restored:
            return True  # nothing was fetched
        grouped = self._grouped
        what = f"shard {self.shard.number} given back" if grouped else "stopped"
        if drained:
            log.info("%s: everything fetched was committed (%d fills were in flight at the signal)", what, pending)
        else:
            log.warning("%s with %d fetched fills not committed (%s); their sources' checkpoints did not move, so "
                        "the next %s fetches them again", what, self.sink.pending_fills,
                        failed or self.sink.held or "Kafka unavailable", "owner" if grouped else "start")
        return drained

    async def drop(self) -> None:
        """The shard is lost: stop at once, hand nothing more to Kafka."""
        self._stop.set()
        for task in self._poll_tasks:
            task.cancel()
        await asyncio.gather(*self._poll_tasks, return_exceptions=True)
        await self.sink.close(None, 1.0)
        await self._close_transports()

    async def _close_transports(self) -> None:
        transports, self._transports = self._transports, []
        for transport in transports:
            await transport.aclose()
