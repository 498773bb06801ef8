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
- fencing (another instance took our transactional id) is final: :class:`ProducerFencedError` is
  raised out of :meth:`run` and the process exits non-zero, so a zombie never publishes.

The sink knows Kafka and the contract's record layout (:mod:`publisher.sink.records`), nothing
about venues. The producer's lifecycle is :mod:`publisher.sink.producer`, the grouping of fill
records into per-partition batches :mod:`publisher.sink.batching`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from publisher.config import KafkaConfig, fills_topic
from publisher.event import DeadLetter, FillEvent, encode
from publisher.metrics import Metrics
from publisher.secret import Secret
from publisher.sink.batching import PartitionBatches
from publisher.sink.producer import FATAL, REBUILD, ProducerFencedError, TransactionalProducer, reason
from publisher.sink.records import common_fill_headers, dead_letter_headers, fill_key

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
    checkpoint: bytes
    #: called with the commit's wall-clock time (ns) once the transaction holding it committed
    on_commit: Callable[[int], None] = field(default=lambda _ns: None)

    @property
    def size(self) -> int:
        return len(self.fills) + len(self.dead_letters)


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
    ):
        self._kafka = kafka
        #: the checkpoint topic's partition every checkpoint record of this sink goes to (a shard's
        #: partition); None: the default partitioner's choice by source name
        self.checkpoint_partition = checkpoint_partition
        self._metrics = metrics
        #: the producer's transactional id (one per shard) is `kafka.transactional_id_prefix` by default
        self._producers = TransactionalProducer(
            kafka, sasl_password, metrics,
            kafka.transactional_id_prefix if transactional_id is None else transactional_id,
            max_backoff_s=max_backoff_s)
        self._queue: deque[SourceBatch] = deque()
        self._work = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._pending = 0
        self._closing = False
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
        """Return once fewer than `max_pending_fills` fetched fills await their commit."""
        await self._capacity.wait()

    def submit(self, batch: SourceBatch) -> None:
        """Queue a batch for the next transaction. Never blocks: callers gate on capacity first."""
        if self._closing:
            raise RuntimeError("sink is closing")
        self._queue.append(batch)
        self._add_pending(batch.size)
        self._work.set()

    def _add_pending(self, delta: int) -> None:
        self._pending += delta
        self._metrics.pending_fills.set(self._pending)
        if self._pending >= self._kafka.max_pending_fills:
            self._capacity.clear()
        else:
            self._capacity.set()

    # ------------------------------------------------------------------ producer lifecycle

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Initialise the transactional producer, retrying with backoff until the cluster answers
        (see :meth:`TransactionalProducer.start`). Raises :class:`ProducerFencedError` when the id
        is not ours to use, and CancelledError when `stop` is set first."""
        try:
            await self._producers.start(stop)
        except FATAL as exc:
            raise self._fatal(exc) from exc
        self._healthy = True

    def _fatal(self, exc: BaseException) -> ProducerFencedError:
        self._healthy = False
        return self._producers.fatal(exc)

    # ------------------------------------------------------------------ commit loop

    async def run(self) -> None:
        """Commit queued batches until :meth:`close`; raises :class:`ProducerFencedError`."""
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._work.clear()
                await self._work.wait()
                continue
            batches = self._take()
            await self._commit_until_done(batches)

    def _take(self) -> list[SourceBatch]:
        """Everything waiting, up to `max_batch_fills` (at least one batch)."""
        taken = [self._queue.popleft()]
        total = taken[0].size
        while self._queue and total + self._queue[0].size <= self._kafka.max_batch_fills:
            batch = self._queue.popleft()
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
        """
        attempt = 0
        while True:
            try:
                try:
                    if self._producer is None:
                        await self._producers.start_once()
                    started = time.perf_counter()
                    self._txn_started = time.monotonic()
                    try:
                        await asyncio.wait_for(self._transaction(batches), self._kafka.transaction_timeout_s)
                    finally:
                        self._txn_started = None
                except FATAL:
                    raise
                except Exception as exc:  # see docstring: recover, retry
                    self._healthy = False
                    attempt += 1
                    self._metrics.publish_errors.labels(reason=reason(exc)).inc()
                    delay = self._producers.backoff(attempt)
                    log.warning("transaction of %d batches (%d fills) failed (%s: %s); retrying in %.2fs",
                                len(batches), sum(b.size for b in batches), type(exc).__name__, exc, delay)
                    await self._recover(exc)
                    await asyncio.sleep(delay)
                    continue
            except FATAL as exc:
                raise self._fatal(exc) from exc
            committed_ns = time.time_ns()
            self._metrics.commit_duration.observe(time.perf_counter() - started)
            self._healthy = True
            if attempt:
                log.info("transaction committed after %d failed attempts", attempt)
            self._add_pending(-sum(b.size for b in batches))
            for batch in batches:
                batch.on_commit(committed_ns)
            return

    async def _recover(self, exc: BaseException) -> None:
        """Leave the failed transaction behind: abort it, or rebuild the producer.

        Rebuild at once when the producer's own state is broken (:data:`REBUILD`; a timed-out
        transaction counts, since aiokafka's idempotent producer never expires its batches and
        an abort would queue behind them), else try an abort first. A final error (fencing)
        raised by the abort or the rebuild propagates.
        """
        producer = self._producer
        if producer is None:
            return
        if not isinstance(exc, REBUILD):
            try:
                await asyncio.wait_for(producer.abort_transaction(), self._kafka.request_timeout_s)
                return
            except FATAL:
                raise
            except Exception as abort_exc:  # any failure here means: start over
                log.info("abort failed (%s); rebuilding the producer", type(abort_exc).__name__)
        try:
            await self._producers.rebuild()
        except FATAL:
            raise
        except Exception as start_exc:  # the next attempt retries the start
            log.warning("producer rebuild failed (%s: %s); retrying", type(start_exc).__name__, start_exc)
            self._producer = None

    async def _transaction(self, batches: list[SourceBatch]) -> None:
        producer = self._producer
        assert producer is not None
        kafka = self._kafka
        await producer.begin_transaction()
        records = PartitionBatches(producer)
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
            for fill in batch.fills:
                key = keys.get(fill.instrument)
                if key is None:
                    key = keys[fill.instrument] = fill_key(batch.source, fill.instrument)
                value = encode(fill)
                headers = [("fill_id", fill.fill_id.encode()), *common]
                if not append(topic, key, value, headers):
                    await records.add(topic, key, value, headers)
            for letter in batch.dead_letters:
                headers = dead_letter_headers(source, venue)
                futures.append(await producer.send(kafka.dlq_topic, encode(letter), key=source, headers=headers))
            checkpoints[batch.source] = batch.checkpoint  # a later batch of a source supersedes
        await records.flush()
        for name, checkpoint in checkpoints.items():
            futures.append(await producer.send(kafka.checkpoint_topic, checkpoint, key=name.encode(),
                                               partition=self.checkpoint_partition))
        await asyncio.gather(*futures)
        await producer.commit_transaction()

    # ------------------------------------------------------------------ shutdown

    async def close(self, runner: asyncio.Task[None] | None, timeout_s: float) -> bool:
        """Commit what is queued, then stop the producer; returns within about `timeout_s`.

        The commit loop gets `timeout_s` minus a reserve for stopping the producer; when Kafka is
        away it is cancelled then (the uncommitted batches' checkpoints did not move, so the next
        start fetches those fills again). Returns True when everything submitted was committed.
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
        return drained
