"""Which shards this instance owns: every one (no cluster), or its share in a Kafka consumer group.

With `cluster.shards` > 1 the instances of one config share the shards through a consumer group
(`cluster.group_id`) subscribed to the checkpoint topic, whose partition `k` stands for shard `k`:
the group coordinator's assignment of the partitions is the ownership of the shards, and Kafka
itself notices an instance that died or froze (no heartbeat within `cluster.session_timeout_s`)
and gives its shards to the others. Nothing is read from the partitions here: they stay paused,
and `getmany` is called only because it is what keeps a consumer a live member.

aiokafka's group protocol is eager: every rebalance first revokes every partition of every member,
then assigns anew. On revocation (:meth:`GroupMembership.on_partitions_revoked`, while the member
still heartbeats) each shard is given back within the rebalance deadline: polling stops, what is in
flight is committed, the producer closed. On assignment each shard is taken in the background
(:meth:`~publisher.ownership.Ownership.take`): aiokafka starts heartbeating only after the callback
returns, so nothing slow may happen in it. Taking a shard initialises its producer first, which
fences any earlier owner still alive (a frozen zombie) and aborts what it left open, then restores
its checkpoints: correctness never depends on the previous owner having let go in time.

Ready (`/readyz`) means: a member with an assignment, and every shard it owns restored. A member
owning no shard (more instances than shards) is a ready standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, InvalidSessionTimeoutError

from publisher.config import ConfigError, Settings, fills_topic
from publisher.kafkaclient import consumer_options, ensure_topics, topic_partitions
from publisher.metrics import Metrics
from publisher.ownership import Ownership
from publisher.poll import Backoff

log = logging.getLogger(__name__)

#: how long one `getmany` waits (it returns nothing: the partitions are paused)
_POLL_MS = 500
#: of the rebalance deadline (the session timeout), what giving shards back may use
_GIVE_BACK_SHARE = 0.7


class GroupMembership(ConsumerRebalanceListener):
    """This instance as a member of the consumer group that shares the shards."""

    def __init__(self, settings: Settings, ownership: Ownership, metrics: Metrics):
        self._settings = settings
        self._ownership = ownership
        self._metrics = metrics
        self._layout = ownership.layout
        ownership.confirm = self.confirm
        assert self._layout.group_id is not None
        self.group_id: str = self._layout.group_id
        self._consumer: AIOKafkaConsumer | None = None
        #: the group assigned us shards, and no revocation has come since
        self.assigned = False
        #: a member that had an assignment once (a rebalance, not the first join)
        self._joined_once = False
        #: what start-up waits for before the first join
        self._waiting = "waiting for Kafka: checkpoint topic"
        self._background: set[asyncio.Task[bool]] = set()

    async def confirm(self, shard: int) -> bool:
        """Whether this instance still owns `shard` in the group's current generation, asked of
        Kafka before the shard's producer is initialised.

        An offset commit for the shard's partition succeeds only for a member of the current
        generation: the coordinator refuses it after this member was evicted (a freeze or a cut
        past the session timeout) and while a rebalance is under way. Without this, an instance
        that thaws after its shards moved could initialise a shard's producer before its own
        membership noticed, fencing the instance that owns the shard now. (The committed offsets
        mean nothing: nothing is read from the partitions.) Raises when Kafka cannot tell yet.
        """
        consumer = self._consumer
        if consumer is None or not self.assigned:
            return False
        kafka = self._settings.config.kafka
        try:
            await asyncio.wait_for(consumer.commit({TopicPartition(kafka.checkpoint_topic, shard): (0, "owner")}),
                                   kafka.request_timeout_s)
        except (CommitFailedError, IllegalStateError):
            return False
        return True

    def not_ready_reason(self) -> str | None:
        if not self.assigned:
            return "rebalancing" if self._joined_once else self._waiting
        return self._ownership.not_ready_reason()

    async def run(self, stop: asyncio.Event, shutdown_budget_s: float) -> None:
        """Be a member until `stop` is set or the ownership ends; then give every shard back
        within about `shutdown_budget_s` and leave the group."""
        if not await self._prepare(stop):
            return
        consumer = await self._join(stop)
        if consumer is None:
            return
        try:
            await self._heartbeat_until(stop, consumer)
        finally:
            # a second of the budget is left for leaving the group
            await self._ownership.give_back_all(max(1.0, shutdown_budget_s - 1.0))
            # leaves the group (LeaveGroup, unless static membership), so the others take over now
            await self._leave(consumer)

    async def _leave(self, consumer: AIOKafkaConsumer) -> None:
        """Stop being a member: no shard may stay owned past its consumer (aiokafka's stop() calls
        no revocation callback), so whatever a callback took is given back first."""
        self.assigned = False
        await self._ownership.give_back_all(1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 2.0)
        self._consumer = None

    async def _prepare(self, stop: asyncio.Event) -> bool:
        """Create missing topics, the checkpoint topic with one partition per shard; check that
        it has a partition for every shard. Retries while Kafka is away; False: stopped first."""
        settings = self._settings
        kafka = settings.config.kafka
        shards = len(self._layout.shards)
        options = consumer_options(kafka, settings.sasl_password, settings.ssl_key_password)
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        while not stop.is_set():
            try:
                if kafka.create_topics:
                    venues = sorted({s.venue_name for s in settings.config.sources})
                    await ensure_topics(kafka, settings.sasl_password, [fills_topic(kafka, v) for v in venues],
                                        checkpoint_partitions=shards, ssl_key_password=settings.ssl_key_password)
                partitions = await asyncio.wait_for(topic_partitions(options, kafka.checkpoint_topic),
                                                    kafka.request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - Kafka away or refusing: retry
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if partitions is not None and len(partitions) >= shards:
                    return True
                if partitions is not None:
                    raise ConfigError("cluster.shards", (
                        f"the checkpoint topic {kafka.checkpoint_topic} has {len(partitions)} partitions, fewer than "
                        f"the {shards} shards (one partition per shard): changing the number of shards is an offline "
                        f"step, `fill-publisher reshard`"))
                problem = (f"checkpoint topic {kafka.checkpoint_topic} does not exist (create it compacted, with "
                           f"{shards} partitions, or allow kafka.create_topics)")
            delay = backoff.next_delay()
            log.warning("cannot join the shards' consumer group yet: %s; retrying in %.1fs", problem, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return False

    async def _join(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        """A started group member (None: stopped first); retries while Kafka is away."""
        settings = self._settings
        kafka, cluster = settings.config.kafka, settings.config.cluster
        self._waiting = f"joining consumer group {self.group_id}"
        session_ms = int(cluster.session_timeout_s * 1000)
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                **consumer_options(kafka, settings.sasl_password, settings.ssl_key_password),
                group_id=self.group_id,
                group_instance_id=cluster.instance_id,
                session_timeout_ms=session_ms,
                heartbeat_interval_ms=max(1000, session_ms // 4),
                rebalance_timeout_ms=session_ms,
                # round robin over one topic's sorted partitions: every member gets within one of
                # the same number of shards, also when the topic has partitions beyond the shards
                partition_assignment_strategy=(RoundRobinPartitionAssignor,),
                enable_auto_commit=False,
                auto_offset_reset="latest",
            )
            consumer.subscribe([kafka.checkpoint_topic], listener=self)
            self._consumer = consumer
            # start() returns once the group assigned us partitions: a rebalance may wait for
            # other members up to the rebalance timeout, so no deadline here, only `stop`
            starting = asyncio.create_task(consumer.start(), name="join")
            stopped = asyncio.create_task(stop.wait(), name="stop")
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if starting.done() and starting.exception() is None:
                log.info("joined consumer group %s (%d shards)", self.group_id, len(self._layout.shards))
                return consumer
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            error = None if starting.cancelled() else starting.exception()
            await self._leave(consumer)
            if error is None:
                break  # stopped
            if isinstance(error, InvalidSessionTimeoutError):
                raise ConfigError("cluster.session_timeout_s", (
                    f"the brokers refuse a session timeout of {cluster.session_timeout_s:g}s: it must lie within their "
                    f"group.min.session.timeout.ms and group.max.session.timeout.ms (6 s and 30 min by default)"))
            delay = backoff.next_delay()
            log.warning("cannot join consumer group %s (%s: %s); retrying in %.1fs",
                        self.group_id, type(error).__name__, error, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return None

    async def _heartbeat_until(self, stop: asyncio.Event, consumer: AIOKafkaConsumer) -> None:
        """Call `getmany` (a member that stops calling it leaves the group) until `stop` is set or
        the ownership ends; errors are logged once per kind and retried."""
        ended = self._ownership.ended
        last_error: str | None = None
        while not stop.is_set() and not ended.is_set():
            try:
                await consumer.getmany(timeout_ms=_POLL_MS)
                last_error = None
            except Exception as exc:  # noqa: BLE001 - the member must live on: log once per kind, retry
                kind = type(exc).__name__
                if kind != last_error:
                    log.warning("consumer group %s: %s: %s; retrying", self.group_id, kind, exc)
                last_error = kind
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    # -- aiokafka's rebalance callbacks ---------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Give every revoked shard back before the group reassigns it (the member still
        heartbeats meanwhile)."""
        self.assigned = False
        shards = [tp.partition for tp in revoked]
        if not shards:
            return
        budget = self._settings.config.cluster.session_timeout_s * _GIVE_BACK_SHARE
        started = time.monotonic()
        drained = await self._ownership.give_back(shards, budget)
        log.info("gave back shards %s in %.2fs%s", _numbers(shards), time.monotonic() - started,
                 "" if drained else " (some fetched fills left uncommitted: their next owner fetches them again)")

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Take the assigned shards in the background: aiokafka heartbeats only once this returns."""
        partitions = list(assigned)
        consumer = self._consumer
        if consumer is not None and partitions:
            consumer.pause(*partitions)
        shards = [tp.partition for tp in partitions]
        real = [n for n in shards if self._layout.shard(n) is not None]
        self._metrics.rebalances.inc()
        log.info("consumer group %s assigned shards %s to this instance", self.group_id, _numbers(real) or "none")
        stale = set(self._ownership.owned) - set(shards)
        if stale:
            # the eager protocol revokes everything before assigning; a revocation that failed
            # must not leave a shard running here that the group gave to another member
            log.warning("shards %s are still running here but no longer assigned; giving them back", _numbers(stale))
            task = asyncio.get_running_loop().create_task(
                self._ownership.give_back(stale, self._settings.config.cluster.session_timeout_s * _GIVE_BACK_SHARE))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._ownership.take(shards)
        self.assigned = True
        self._joined_once = True


def _numbers(shards: Iterable[int]) -> str:
    return ", ".join(str(n) for n in sorted(shards))
