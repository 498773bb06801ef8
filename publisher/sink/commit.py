"""The commit loop: fills, dead letters and checkpoints in one Kafka transaction, all or nothing.

Pollers hand the sink :class:`SourceBatch`es. One loop takes every batch waiting (group commit: a
transaction may carry several sources' polls), writes their fills, dead letters and each source's
newest checkpoint in ONE Kafka transaction, and commits. Only then does it tell the batches'
owners (`on_commit`), so published counters and lag describe committed data only.

Failure handling, in the order it matters:
- a batch handed to the sink is never dropped: a failed transaction is aborted (or the producer is
  rebuilt, which aborts it on the broker) and the same batches are retried with backoff until they
  commit or the process ends; a crash loses nothing because the checkpoint did not move either;
- every transaction has a deadline (`transaction_timeout_s`): aiokafka's idempotent producer
  retries forever while the broker is away (its batches never expire), so a hung transaction is
  given up and the producer rebuilt; so is a producer whose id/epoch/sequence state broke
  (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch) or whose sender task died;
- /readyz follows :attr:`TransactionalSink.healthy`: false after a failed attempt, and while a
  transaction hangs, until the next commit succeeds;
- memory is bounded: :meth:`wait_for_capacity` holds pollers back while `max_pending_fills` fetched
  fills are waiting, so an outage pauses polling instead of buffering without limit;
- a commit whose outcome is unknown (it failed or timed out after the commit request went out:
  the coordinator may have committed it) is never retried blindly, which would publish its fills
  twice: the producer is rebuilt, which makes the coordinator finish or abort it for good, and one
  of its records is read back (:mod:`publisher.sink.outcome`) to tell which;
- fencing (another instance took our transactional id) is final: :class:`~publisher.sink.producer.TransactionalIdLostError` is
  raised out of :meth:`run` and the process exits non-zero, so a zombie never publishes.

The sink knows Kafka and the contract's record layout (:mod:`publisher.sink.records`), nothing
about venues. The producer's lifecycle is :mod:`publisher.sink.producer`, the grouping of fill
records into per-partition batches :mod:`publisher.sink.batching`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from publisher.checkpoint import encoded_checkpoint_records
from publisher.config import KafkaConfig, fills_topic
from publisher.event import DeadLetter, FillEvent, encode
from publisher.kafkaclient import consumer_options
from publisher.metrics import Metrics
from publisher.secret import Secret
from publisher.sink.backlog import Backlog
from publisher.sink.batching import PartitionBatches, partition_for
from publisher.sink.held import HeldSources
from publisher.sink.outcome import record_committed
from publisher.sink.producer import (
    FATAL,
    REBUILD,
    RECORD_ERRORS,
    TransactionalIdLostError,
    TransactionalProducer,
    reason,
)
from publisher.sink.records import (
    common_fill_headers,
    dead_letter_headers,
    dead_letter_value,
    fill_key,
    oversized_fill,
    record_budget,
)

log = logging.getLogger(__name__)

#: a transaction in flight longer than this makes the sink unhealthy (/readyz 503) before it fails
_STALE_TXN_S = 10.0
#: of a shutdown's time budget, what stopping the producer may take at the end
_STOP_RESERVE_S = 1.5


@dataclass(slots=True, eq=False)
class SourceBatch:
    """One poll's output for one source: publish all of it, with the checkpoint, atomically."""

    source: str
    venue: str
    fills: list[FillEvent]
    dead_letters: list[DeadLetter]
    #: the source's state after this batch, encoded (the sink splits it when it exceeds a record)
    checkpoint: bytes
    #: called with the commit's wall-clock time (ns) once the transaction holding it committed
    on_commit: Callable[[int], None] = field(default=lambda _ns: None)

    @property
    def size(self) -> int:
        return len(self.fills) + len(self.dead_letters)


#: (topic, partition, offset) -> whether the record's transaction committed (see publisher.sink.outcome)
Settle = Callable[[str, int, int], Awaitable[bool]]


@dataclass(slots=True, eq=False)
class _InDoubt:
    """A transaction whose commit request went out but whose outcome we do not know."""

    batches: list[SourceBatch]
    parts: dict[str, int]
    #: where one of its records (the last checkpoint record) was written
    topic: str
    partition: int
    offset: int


def _sources(batches: list[SourceBatch]) -> str:
    names = sorted({batch.source for batch in batches})
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class TransactionalSink:
    """Group-committing transactional producer for fills, dead letters and checkpoints."""

    def __init__(
        self,
        kafka: KafkaConfig,
        sasl_password: Secret | None,
        metrics: Metrics,
        *,
        max_backoff_s: float = 10.0,
        transactional_id: str | None = None,
        checkpoint_partition: int | None = None,
        ssl_key_password: Secret | None = None,
        settle: Settle | None = None,
        backlog: Backlog | None = None,
    ):
        self._kafka = kafka
        if settle is None:
            options = consumer_options(kafka, sasl_password, ssl_key_password)
            deadline_s = max(kafka.request_timeout_s, kafka.transaction_timeout_s)

            async def settle(topic: str, partition: int, offset: int) -> bool:
                return await record_committed(options, topic, partition, offset, deadline_s)
        self._settle = settle
        #: the transaction whose commit outcome is unknown, settled before the next one begins
        self._in_doubt: _InDoubt | None = None
        #: a transaction was begun on the current producer and neither committed nor left behind
        self._txn_open = False
        #: the checkpoint topic's partition every checkpoint record of this sink goes to (a shard's
        #: partition); None: the default partitioner's choice by source name
        self.checkpoint_partition = checkpoint_partition
        self._metrics = metrics
        #: the producer's transactional id (one per shard) is `kafka.transactional_id_prefix` by default
        self._producers = TransactionalProducer(
            kafka, sasl_password, metrics,
            kafka.transactional_id_prefix if transactional_id is None else transactional_id,
            max_backoff_s=max_backoff_s, ssl_key_password=ssl_key_password)
        self._queue: deque[SourceBatch] = deque()
        self._work = asyncio.Event()
        #: shared by every sink of the process (one per shard owned): the memory bound
        self._backlog = backlog if backlog is not None else Backlog(kafka.max_pending_fills, metrics.pending_fills)
        #: this sink's own share of it
        self._pending = 0
        #: what close() took out of the backlog (the share left uncommitted)
        self._backlog_released = 0
        self._closing = False
        self._budget = record_budget(kafka.max_record_bytes)
        #: sources whose batches Kafka refused, retried alone
        self._held = HeldSources()
        #: part records of each source's newest committed checkpoint (tombstoned when it shrinks)
        self._parts_written: dict[str, int] = {}
        self._healthy = False
        #: monotonic start of the transaction in flight, None between transactions
        self._txn_started: float | None = None
        self._stale_txn_s = min(_STALE_TXN_S, kafka.request_timeout_s)

    @property
    def transactional_id(self) -> str:
        return self._producers.transactional_id

    @property
    def rebuilds(self) -> int:
        """Producers replaced after a failure, for tests and logs."""
        return self._producers.rebuilds

    @property
    def _producer(self) -> AIOKafkaProducer | None:
        return self._producers.current

    @_producer.setter
    def _producer(self, producer: AIOKafkaProducer | None) -> None:
        self._producers.current = producer

    @property
    def held(self) -> str | None:
        """Sources held back because Kafka refuses a record of theirs, and why (None: none)."""
        return self._held.describe()

    @property
    def healthy(self) -> bool:
        """The producer is initialised, the last transaction attempt succeeded and the one in
        flight (if any) is not hanging: /readyz turns 503 soon after Kafka goes away even while
        a transaction still waits for its deadline."""
        started = self._txn_started
        return self._healthy and (started is None or time.monotonic() - started < self._stale_txn_s)

    # ------------------------------------------------------------------ pollers' side

    @property
    def pending_fills(self) -> int:
        return self._pending

    async def wait_for_capacity(self) -> None:
        """Return once fewer than `max_pending_fills` fetched fills (of the whole process) await
        their commit."""
        await self._backlog.wait_for_capacity()

    def submit(self, batch: SourceBatch) -> None:
        """Queue a batch for the next transaction. Never blocks: callers gate on capacity first."""
        if self._closing:
            raise RuntimeError("sink is closing")
        self._queue.append(batch)
        self._add_pending(batch.size)
        self._work.set()

    def _add_pending(self, delta: int) -> None:
        self._pending += delta
        self._backlog.add(delta)

    # ------------------------------------------------------------------ producer lifecycle

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Initialise the transactional producer, retrying with backoff until the cluster answers
        (see :meth:`TransactionalProducer.start`). Raises :class:`~publisher.sink.producer.TransactionalIdLostError` when the id
        is not ours to use, and CancelledError when `stop` is set first."""
        try:
            await self._producers.start(stop)
        except FATAL as exc:
            raise self._fatal(exc) from exc
        self._healthy = True

    def _fatal(self, exc: BaseException) -> TransactionalIdLostError:
        self._healthy = False
        return self._producers.fatal(exc)

    # ------------------------------------------------------------------ commit loop

    async def run(self) -> None:
        """Commit queued batches until :meth:`close`; raises :class:`~publisher.sink.producer.TransactionalIdLostError`."""
        while True:
            due = self._held.due(time.monotonic())
            if due is not None:
                await self._commit_until_done(self._held.release(due))
                continue
            if not self._queue:
                if self._closing:
                    return
                self._work.clear()
                wake = self._held.next_retry_in(time.monotonic())
                if wake is None:
                    await self._work.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wake):
                            await self._work.wait()
                continue
            batches = self._take()
            if batches:
                await self._commit_until_done(batches)

    def _take(self) -> list[SourceBatch]:
        """Everything waiting, up to `max_batch_fills` (at least one batch), but for the batches of
        held sources, which join their source's held batches (they commit after them)."""
        taken: list[SourceBatch] = []
        total = 0
        queue, held = self._queue, self._held
        while queue and (not taken or total + queue[0].size <= self._kafka.max_batch_fills):
            batch = queue.popleft()
            if held.holds(batch.source):
                held.add(batch)
                continue
            total += batch.size
            taken.append(batch)
        return taken

    async def _commit_until_done(self, batches: list[SourceBatch]) -> None:
        """Commit `batches` in one transaction, retrying (never dropping them) until it works.

        Every failure but a final one (:data:`FATAL`) is counted, followed by an abort or a
        producer rebuild (:meth:`_recover`) and a backoff. That includes errors aiokafka raises
        from its own state machine (AssertionError on an illegal transition after a cancelled
        commit, "Unexpected error during batch delivery" when its sender task died): a fresh
        producer is the cure for all of them.

        A failure that names a record the cluster refuses (:data:`RECORD_ERRORS`: too large for the
        topic, a topic we may not write) would fail every retry: the batches are then committed
        source by source, and a source whose own transaction still fails is held back (retried
        alone, with a growing pause) so that every other source goes on committing.

        A transaction whose commit outcome is unknown is settled (:meth:`_settle_doubt`) before
        anything else is written; until then its batches stay in this loop's list.
        """
        attempt = 0
        while batches:
            try:
                if self._in_doubt is not None:
                    batches = await self._settle_doubt(batches)
                    continue
                await self._attempt(batches)
            except FATAL as exc:
                raise self._fatal(exc) from exc
            except Exception as exc:  # noqa: BLE001 - see docstring: recover, retry
                attempt += 1
                await self._failed(batches, exc)
                if isinstance(exc, RECORD_ERRORS) and self._in_doubt is None:
                    batches = await self._isolate(batches, exc)
                    continue
                delay = self._producers.backoff(attempt)
                log.warning("retrying in %.2fs", delay)
                await asyncio.sleep(delay)
                continue
            if attempt:
                log.info("transaction committed after %d failed attempts", attempt)
            return

    async def _attempt(self, batches: list[SourceBatch]) -> None:
        """One transaction of `batches`; on success, their owners are told."""
        assert self._in_doubt is None, "settle the transaction in doubt first"
        if self._producer is None:
            await self._producers.start_once()
        started = time.perf_counter()
        self._txn_started = time.monotonic()
        try:
            parts = await asyncio.wait_for(self._transaction(batches), self._kafka.transaction_timeout_s)
        finally:
            self._txn_started = None
        self._in_doubt = None
        self._txn_open = False
        self._metrics.commit_duration.observe(time.perf_counter() - started)
        self._committed(batches, parts)

    async def _settle_doubt(self, batches: list[SourceBatch]) -> list[SourceBatch]:
        """Learn whether the transaction in doubt committed; returns what is still to be written:
        `batches` without the doubtful transaction's batches when it committed, else with them
        (first, as they are older). Raises when Kafka cannot tell yet (the loop retries later)."""
        doubt = self._in_doubt
        assert doubt is not None
        if self._producer is None:
            await self._producers.start_once()
        # a producer of our transactional id was initialised after the doubtful commit (the
        # rebuild that followed it), so its outcome is final now
        committed = await self._settle(doubt.topic, doubt.partition, doubt.offset)
        self._in_doubt = None
        if committed:
            log.warning("the transaction of %d batches (%d fills) of %s whose commit outcome was unknown had "
                        "committed; its fills are not sent again", len(doubt.batches),
                        sum(b.size for b in doubt.batches), _sources(doubt.batches))
            self._committed(doubt.batches, doubt.parts)
            return [b for b in batches if not any(b is d for d in doubt.batches)]
        log.info("the transaction whose commit outcome was unknown had been aborted; sending its batches again")
        missing = [d for d in doubt.batches if not any(d is b for b in batches)]
        return [*missing, *batches]

    def _committed(self, batches: list[SourceBatch], parts: dict[str, int]) -> None:
        """`batches` are in Kafka: account for them and tell their owners."""
        committed_ns = time.time_ns()
        self._healthy = True
        self._parts_written.update(parts)
        self._held.committed({batch.source for batch in batches})
        self._add_pending(-sum(b.size for b in batches))
        for batch in batches:
            batch.on_commit(committed_ns)

    async def _failed(self, batches: list[SourceBatch], exc: Exception) -> None:
        """Count and log a failed transaction, then leave it behind (:meth:`_recover`)."""
        self._healthy = False
        self._metrics.publish_errors.labels(reason=reason(exc)).inc()
        log.warning("transaction of %d batches (%d fills) of %s failed (%s: %s)",
                    len(batches), sum(b.size for b in batches), _sources(batches), type(exc).__name__, exc)
        await self._recover(exc)

    async def _isolate(self, batches: list[SourceBatch], exc: Exception) -> list[SourceBatch]:
        """After a record error: each source's batches in a transaction of their own; a source
        whose transaction fails with a record error again is held back. Returns the batches still
        to retry as usual (after an error that is not a record's: Kafka itself is failing)."""
        groups: dict[str, list[SourceBatch]] = {}
        for batch in batches:
            groups.setdefault(batch.source, []).append(batch)
        if len(groups) == 1:
            self._hold(batches, exc)
            return []
        pending = list(groups.values())
        while pending:
            group = pending.pop(0)
            try:
                await self._attempt(group)
            except FATAL as fatal:
                raise self._fatal(fatal) from fatal
            except Exception as again:  # noqa: BLE001 - like _commit_until_done
                await self._failed(group, again)
                if not isinstance(again, RECORD_ERRORS) or self._in_doubt is not None:
                    return [b for g in (group, *pending) for b in g]
                self._hold(group, again)
        return []

    def _hold(self, batches: list[SourceBatch], exc: Exception) -> None:
        source = batches[0].source
        delay = self._held.hold(source, batches, f"{type(exc).__name__}: {exc}", time.monotonic())
        log.error("source %s: Kafka refuses a record of its batch (%s: %s); its %d fills are held back and "
                  "retried alone in %.0fs, the other sources go on", source, type(exc).__name__, exc,
                  sum(b.size for b in batches), delay)

    async def _recover(self, exc: BaseException) -> None:
        """Leave the failed transaction behind: abort it, or rebuild the producer.

        Rebuild at once when the commit request went out (the outcome is unknown: only a new
        producer's initialisation settles it) or the producer's own state is broken
        (:data:`REBUILD`; a timed-out transaction counts, since aiokafka's idempotent producer never
        expires its batches and an abort would queue behind them), else try an abort first. A final error (fencing)
        raised by the abort or the rebuild propagates.
        """
        producer = self._producer
        if producer is None or not self._txn_open:
            return  # nothing begun to leave behind (the failure was the start or the settling)
        self._txn_open = False
        if self._in_doubt is None and not isinstance(exc, REBUILD):
            try:
                await asyncio.wait_for(producer.abort_transaction(), self._kafka.request_timeout_s)
                return
            except FATAL:
                raise
            except Exception as abort_exc:  # noqa: BLE001 - any failure here means: start over
                log.info("abort failed (%s); rebuilding the producer", type(abort_exc).__name__)
        try:
            await self._producers.rebuild()
        except FATAL:
            raise
        except Exception as start_exc:  # noqa: BLE001 - the next attempt retries the start
            log.warning("producer rebuild failed (%s: %s); retrying", type(start_exc).__name__, start_exc)
            self._producer = None

    async def _transaction(self, batches: list[SourceBatch]) -> dict[str, int]:
        """Write and commit `batches`; returns the part count of each source's checkpoint.

        Every record is sized before it is sent (:mod:`publisher.sink.records`): a fill too large
        goes to the DLQ as a truncated dead letter, a dead letter too large is truncated, and a
        checkpoint is split into records that fit.
        """
        producer = self._producer
        assert producer is not None
        kafka = self._kafka
        budget = self._budget
        self._txn_open = True
        await producer.begin_transaction()
        records = PartitionBatches(producer, budget)
        futures = records.futures
        checkpoints: dict[str, bytes] = {}
        for batch in batches:
            source = batch.source.encode()
            topic = fills_topic(kafka, batch.venue)
            venue = batch.venue.encode()
            # every header but the fill id is the same for the whole batch
            common = common_fill_headers(source, venue)
            keys: dict[str, bytes] = {}
            append = records.append
            oversized: list[DeadLetter] = []
            for fill in batch.fills:
                key = keys.get(fill.instrument)
                if key is None:
                    key = keys[fill.instrument] = fill_key(batch.source, fill.instrument)
                value = encode(fill)
                headers = [("fill_id", fill.fill_id.encode()), *common]
                if not append(topic, key, value, headers) and not await records.add(topic, key, value, headers):
                    oversized.append(oversized_fill(fill, value))
            if oversized:
                log.error("source %s: %d fills too large for a record (limit %d bytes) go to %s instead",
                          batch.source, len(oversized), budget, kafka.dlq_topic)
            for letter in (*batch.dead_letters, *oversized):
                headers = dead_letter_headers(source, venue)
                futures.append(await producer.send(kafka.dlq_topic, dead_letter_value(letter, budget), key=source,
                                                   headers=headers))
            checkpoints[batch.source] = batch.checkpoint  # a later batch of a source supersedes
        await records.flush()
        parts: dict[str, int] = {}
        topic = kafka.checkpoint_topic
        for name, checkpoint in checkpoints.items():
            written = self._parts_written.get(name, 0)
            cp_records = encoded_checkpoint_records(checkpoint, name, budget, stale_parts=range(1, written + 1))
            partition = self.checkpoint_partition
            if partition is None:
                # every record of a source's checkpoint in one partition: where its head would go
                partition = partition_for(name.encode(), await producer.partitions_for(topic))
            for key, record in cp_records:
                marker = await producer.send(topic, record, key=key, partition=partition)
                futures.append(marker)
            parts[name] = sum(1 for _, record in cp_records[:-1] if record is not None)
        await asyncio.gather(*futures)
        written = marker.result()
        # from here on a failure leaves the outcome unknown: the coordinator may commit anyway
        self._in_doubt = _InDoubt(batches, parts, written.topic, written.partition, written.offset)
        await producer.commit_transaction()
        return parts

    # ------------------------------------------------------------------ shutdown

    async def close(self, runner: asyncio.Task[None] | None, timeout_s: float) -> bool:
        """Commit what is queued, then stop the producer; returns within about `timeout_s`.

        The commit loop gets `timeout_s` minus a reserve for stopping the producer; when Kafka is
        away it is cancelled then (the uncommitted batches' checkpoints did not move, so the next
        start fetches those fills again). Returns True when everything submitted was committed.
        What is left stays counted in :attr:`pending_fills` but leaves the process' backlog.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._closing = True
        self._work.set()
        if runner is not None and not runner.done():
            done, _ = await asyncio.wait({runner}, timeout=max(0.0, timeout_s - _STOP_RESERVE_S))
            if not done:
                runner.cancel()
                # cancellation may run clean-up awaits (a half-started producer): bounded too
                await asyncio.wait({runner}, timeout=max(0.1, min(1.0, deadline - loop.time() - 0.5)))
        drained = self._pending == 0
        await self._producers.close(max(0.2, deadline - loop.time()))
        self._healthy = False
        # what is left is abandoned (its checkpoints did not move: the next owner fetches it again)
        # and no longer holds the process' pollers back; close() may be called more than once
        self._backlog.add(self._backlog_released - self._pending)
        self._backlog_released = self._pending
        return drained
