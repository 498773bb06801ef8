"""The commit loop: fills, dead letters and checkpoints in one Kafka transaction, all or nothing.

Pollers hand the sink :class:`SourceBatch`es. One loop takes every batch waiting (group commit: a
transaction may carry several sources' polls), writes their fills, dead letters and each source's
newest checkpoint in ONE Kafka transaction, and commits. Only then does it tell the batches'
owners (`on_commit`), so published counters and lag describe committed data only.

Failure handling, in the order it matters:
- a producer of our transactional id is initialised only when the sink starts, and the caller
  restores the checkpoints it writes from only after that start (see :mod:`publisher.shard_runner`):
  whoever initialised the id last writes from the state Kafka committed last. So the sink never
  replaces its producer itself. When the producer must go, it raises :class:`ProducerStateLost` out
  of :meth:`run` and its batches are abandoned (their checkpoints did not move: the next start
  fetches those fills again). That is the case when the producer's id/epoch/sequence state broke
  (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch) or its sender task died, when
  a transaction outlived its deadline (`transaction_timeout_s`: aiokafka's idempotent producer
  retries forever while a broker is away, and the instance may have been frozen while another took
  its id), when an abort fails, and when a commit failed after its request went out (the
  coordinator may have committed it: sending its batches again would publish them twice);
- any other failed transaction is aborted and the same batches retried with backoff until they
  commit: a batch handed to the sink is never dropped by the sink itself;
- /readyz follows :attr:`TransactionalSink.healthy`: false after a failed attempt, and while a
  transaction hangs, until the next commit succeeds;
- memory is bounded: :meth:`wait_for_capacity` holds pollers back while `max_pending_fills` fetched
  fills (of the whole process, :mod:`publisher.sink.backlog`) are waiting, so an outage pauses
  polling instead of buffering without limit;
- fencing (another instance took our transactional id) is final:
  :class:`~publisher.sink.producer.TransactionalIdLostError` is raised out of :meth:`run`, so a
  zombie never publishes.

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
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from publisher.checkpoint import encoded_checkpoint_records
from publisher.config import KafkaConfig, fills_topic
from publisher.event import DeadLetter, FillEvent, encode
from publisher.metrics import Metrics
from publisher.secret import Secret
from publisher.sink.backlog import Backlog
from publisher.sink.batching import PartitionBatches, partition_for
from publisher.sink.held import HeldSources
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


class ProducerStateLost(RuntimeError):
    """The sink's producer must be replaced, and a replacement may only write from checkpoints
    restored after it started: the caller starts a new sink and restores (see the module
    docstring). The sink's uncommitted batches are abandoned."""


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


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
        backlog: Backlog | None = None,
    ):
        self._kafka = kafka
        #: a transaction was begun on the producer and neither committed nor aborted
        self._txn_open = False
        #: the commit request of the open transaction went out: its outcome is unknown if it fails
        self._commit_sent = False
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
        """Commit queued batches until :meth:`close`. Raises
        :class:`~publisher.sink.producer.TransactionalIdLostError` (fenced: final) and
        :class:`ProducerStateLost` (a new sink must start from restored checkpoints); either way
        the producer is discarded and nothing more is sent."""
        try:
            await self._commit_loop()
        except (ProducerStateLost, TransactionalIdLostError) as exc:
            self._healthy = False
            log.warning("transactional producer %s given up: %s", self.transactional_id, exc)
            await self._producers.close(0.5)
            raise

    async def _commit_loop(self) -> None:
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

        Every failure but a final one (:data:`FATAL`) is counted, followed by an abort and a
        backoff; where an abort cannot leave the transaction behind (see the module docstring),
        :class:`ProducerStateLost` is raised instead. That includes errors aiokafka raises from its
        own state machine (AssertionError on an illegal transition after a cancelled commit,
        "Unexpected error during batch delivery" when its sender task died).

        A failure that names a record the cluster refuses (:data:`RECORD_ERRORS`: too large for the
        topic, a topic we may not write) would fail every retry: the batches are then committed
        source by source, and a source whose own transaction still fails is held back (retried
        alone, with a growing pause) so that every other source goes on committing.
        """
        attempt = 0
        while batches:
            try:
                await self._attempt(batches)
            except FATAL as exc:
                raise self._fatal(exc) from exc
            except ProducerStateLost:
                raise
            except Exception as exc:  # noqa: BLE001 - see docstring: recover, retry
                attempt += 1
                await self._failed(batches, exc)
                if isinstance(exc, RECORD_ERRORS):
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
        if self._producer is None:
            raise ProducerStateLost("the sink has no producer (it was not started, or it was closed)")
        started = time.perf_counter()
        self._txn_started = time.monotonic()
        try:
            parts = await asyncio.wait_for(self._transaction(batches), self._kafka.transaction_timeout_s)
        finally:
            self._txn_started = None
        self._txn_open = False
        self._metrics.commit_duration.observe(time.perf_counter() - started)
        self._committed(batches, parts)

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
            except ProducerStateLost:
                raise
            except Exception as again:  # noqa: BLE001 - like _commit_until_done
                await self._failed(group, again)
                if not isinstance(again, RECORD_ERRORS):
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
        """Leave the failed transaction behind with an abort, or raise :class:`ProducerStateLost`
        where an abort cannot (see the module docstring). A final error (fencing) raised by the
        abort propagates."""
        producer = self._producer
        if producer is None or not self._txn_open:
            return  # nothing was begun
        self._txn_open = False
        if self._commit_sent:
            raise ProducerStateLost(f"the commit failed after its request went out ({type(exc).__name__}): the "
                                    f"coordinator may have committed it; only restored checkpoints can tell") from exc
        if isinstance(exc, REBUILD):
            raise ProducerStateLost(f"the producer's state is unusable ({type(exc).__name__})") from exc
        try:
            await asyncio.wait_for(producer.abort_transaction(), self._kafka.request_timeout_s)
        except FATAL:
            raise
        except Exception as abort_exc:
            raise ProducerStateLost(f"the abort failed ({type(abort_exc).__name__})") from abort_exc

    async def _transaction(self, batches: list[SourceBatch]) -> dict[str, int]:
        """Write and commit `batches`; returns the part count of each source's checkpoint.

        Every record is sized before it is sent (:mod:`publisher.sink.records`): a fill too large
        goes to the DLQ as a truncated dead letter, a dead letter too large is truncated, and a
        checkpoint is split into records that fit.
        """
        producer = self._producer
        assert producer is not None
        self._txn_open = True
        self._commit_sent = False
        await producer.begin_transaction()
        records = PartitionBatches(producer, self._budget)
        try:
            return await self._write_and_commit(producer, batches, records)
        except BaseException:
            # the delivery futures of a failed transaction fail too, later, when nobody awaits
            # them any more: retrieve their errors so asyncio does not log each as never retrieved
            for future in records.futures:
                future.add_done_callback(_retrieve)
            raise

    async def _write_and_commit(self, producer: AIOKafkaProducer, batches: list[SourceBatch],
                                records: PartitionBatches) -> dict[str, int]:
        kafka = self._kafka
        budget = self._budget
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
                futures.append(await producer.send(topic, record, key=key, partition=partition))
            parts[name] = sum(1 for _, record in cp_records[:-1] if record is not None)
        await asyncio.gather(*futures)
        # from here on a failure leaves the outcome unknown: the coordinator may commit anyway
        self._commit_sent = True
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
