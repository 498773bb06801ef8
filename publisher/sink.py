"""The transactional Kafka sink: fills, dead letters and checkpoints, all or nothing.

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

The sink knows Kafka and the contract's record layout (topic, key, headers), nothing about venues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from publisher.config import KafkaConfig, fills_topic
from publisher.event import SCHEMA_VERSION, DeadLetter, FillEvent, encode
from publisher.kafkaclient import CHECKPOINT_MAX_MESSAGE_BYTES, producer_options
from publisher.metrics import Metrics
from publisher.secret import Secret

log = logging.getLogger(__name__)

_SCHEMA_VERSION_HEADER = str(SCHEMA_VERSION).encode()
_PARTITIONER = DefaultPartitioner()
_JSON = b"application/json"
#: final: another instance owns our transactional id (aiokafka turns the broker's
#: INVALID_PRODUCER_EPOCH on transactional requests into ProducerFenced), or we may not use it
_FATAL = (ProducerFenced, TransactionalIdAuthorizationFailed)
#: the producer's id/epoch/sequence state is unusable (an abort cannot fix it): build a new one.
#: OutOfOrderSequenceNumber also kills aiokafka's sender task; a bare InvalidProducerEpoch is the
#: coordinator having bumped our epoch (KIP-588: abortable), not fencing
_REBUILD = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, asyncio.TimeoutError)
#: the broker-side transaction timeout exceeds our own deadline by this much, so the coordinator
#: never aborts (and epoch-bumps) a transaction we are still driving: that would read as fencing
_BROKER_TXN_TIMEOUT_MARGIN_S = 30.0
#: a transaction in flight longer than this makes the sink unhealthy (/readyz 503) before it fails
_STALE_TXN_S = 10.0
#: of a shutdown's time budget, what stopping the producer may take at the end
_STOP_RESERVE_S = 1.5


class ProducerFencedError(RuntimeError):
    """Another producer with our transactional id exists; this instance must stop publishing."""


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


def _reason(exc: BaseException) -> str:
    """A bounded label value for `fillpub_publish_errors_total{reason}`."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, KafkaError):
        return type(exc).__name__
    return "other"


class _PartitionBatches:
    """One transaction's fill records, gathered into one record batch per partition.

    `producer.send()` costs ~40 us a record (metadata lookups, pure-Python murmur2, a future
    each); appending to a `create_batch()` builder and handing full batches to `send_batch()`
    costs a few. The partition is the default partitioner's choice for the key (the producer is
    built with it), looked up once per key and transaction, so keys land where `send()` put them,
    and records keep their order within a partition. Dead letters and checkpoints
    still go through `send()` (few, and it checks their size).
    """

    __slots__ = ("_open", "_partition_of", "_producer", "futures")

    def __init__(self, producer: AIOKafkaProducer):
        self._producer = producer
        self._open: dict[tuple[str, int], BatchBuilder] = {}
        self._partition_of: dict[tuple[str, bytes], tuple[str, int]] = {}
        self.futures: list[asyncio.Future[object]] = []

    def append(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> bool:
        """Add a record to its partition's open batch; False when :meth:`add` must do it."""
        slot = self._partition_of.get((topic, key))
        if slot is None:
            return False
        builder = self._open.get(slot)
        return builder is not None and builder.append(key=key, value=value, timestamp=None, headers=headers) is not None

    async def add(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """The slow path of :meth:`append`: find the partition, hand over a full batch."""
        producer = self._producer
        slot = self._partition_of.get((topic, key))
        if slot is None:
            # what send() does for a keyed record: murmur2 of the key over the topic's partitions
            partitions = sorted(await producer.partitions_for(topic))
            slot = self._partition_of[(topic, key)] = (topic, _PARTITIONER(key, partitions, partitions))
            if self.append(topic, key, value, headers):
                return  # another key of the same partition opened its batch already
        full = self._open.pop(slot, None)
        if full is not None:
            self.futures.append(await producer.send_batch(full, topic, partition=slot[1]))
        builder = self._open[slot] = producer.create_batch()
        builder.append(key=key, value=value, timestamp=None, headers=headers)

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        while self._open:
            (topic, partition), builder = self._open.popitem()
            self.futures.append(await self._producer.send_batch(builder, topic, partition=partition))


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
    ):
        self._kafka = kafka
        #: the producer's transactional id (one per shard); default `kafka.transactional_id_prefix`
        self.transactional_id = kafka.transactional_id_prefix if transactional_id is None else transactional_id
        #: the checkpoint topic's partition every checkpoint record of this sink goes to (a shard's
        #: partition); None: the default partitioner's choice by source name
        self.checkpoint_partition = checkpoint_partition
        self._sasl_password = sasl_password
        self._ssl_key_password = ssl_key_password
        self._metrics = metrics
        self._max_backoff_s = max_backoff_s
        self._queue: deque[SourceBatch] = deque()
        self._work = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._pending = 0
        self._producer: AIOKafkaProducer | None = None
        self._closing = False
        #: producers replaced after a failure, for tests and logs
        self.rebuilds = 0
        self._healthy = False
        #: monotonic start of the transaction in flight, None between transactions
        self._txn_started: float | None = None
        self._stale_txn_s = min(_STALE_TXN_S, kafka.request_timeout_s)

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

    def _new_producer(self) -> AIOKafkaProducer:
        kafka = self._kafka
        return AIOKafkaProducer(**producer_options(
            kafka, self._sasl_password, self._ssl_key_password,
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=int((kafka.transaction_timeout_s + _BROKER_TXN_TIMEOUT_MARGIN_S) * 1000),
            max_request_size=CHECKPOINT_MAX_MESSAGE_BYTES + 65536,
            # fills of one poll arrive together: batch them without waiting for stragglers
            linger_ms=0,
            max_batch_size=1024 * 1024,
        ))

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Initialise the transactional producer, retrying with backoff until the cluster answers.

        Initialising (InitProducerId) fences any older producer with our transactional id and
        aborts its in-doubt transaction, which is why it must happen before checkpoints are read.
        Raises :class:`ProducerFencedError` when the id is not ours to use, and CancelledError
        when `stop` is set first (callers may also simply cancel the call).
        """
        attempt = 0
        while True:
            try:
                await self._start_producer()
                self._healthy = True
                return
            except _FATAL as exc:
                raise self._fatal(exc) from exc
            except (TimeoutError, KafkaError, OSError) as exc:
                attempt += 1
                self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
                delay = self._backoff(attempt)
                log.warning("kafka not reachable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        raise asyncio.CancelledError("stopped before kafka became reachable")
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)

    async def _start_producer(self) -> None:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self._kafka.request_timeout_s)
        except BaseException:
            await self._discard(producer, 0.5)  # it never worked: nothing to flush
            raise
        self._producer = producer
        log.info("transactional producer ready (transactional id %s)", self.transactional_id)

    async def _discard(self, producer: AIOKafkaProducer, timeout_s: float = 2.0) -> None:
        """Stop `producer` within about `timeout_s`, even when it is wedged.

        `AIOKafkaProducer.stop()` first flushes, which never ends for an idempotent producer whose
        broker is gone (aiokafka never expires its batches). After `timeout_s` the producer is torn
        down without flushing, so an abandoned producer leaves no sender task or connection behind
        (they would pile up, one per rebuild, during a long outage). Nothing of value is dropped:
        what it still held belonged to a transaction that is being abandoned anyway.
        """
        try:
            await asyncio.wait_for(producer.stop(), timeout_s)
            return
        except Exception as exc:  # noqa: BLE001 - it is being discarded anyway
            log.debug("producer did not stop cleanly (%s); tearing it down", type(exc).__name__)
        # aiokafka 0.14 internals, each optional: fail what the accumulator holds (releases the
        # flush that stop() left waiting), cancel the sender, close the connections
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        accumulator = getattr(producer, "_message_accumulator", None)
        with contextlib.suppress(Exception):
            if accumulator is not None:
                accumulator.fail_all(KafkaError("producer discarded"))
        if task is not None and not task.done():
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.client.close(), 1.0)
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=1.0)

    async def _rebuild_producer(self) -> None:
        """Drop the producer and make a new one.

        The new producer's InitProducerId makes the coordinator abort our open transaction (real
        Kafka; the mock broker leaves it open forever, see docs/failure-behaviour-kafka.md).
        """
        old, self._producer = self._producer, None
        if old is not None:
            await self._discard(old, 0.5)  # it failed: a short grace, then torn down
        self.rebuilds += 1
        await self._start_producer()
        log.warning("rebuilt the transactional producer (%d rebuilds so far)", self.rebuilds)

    def _fatal(self, exc: BaseException) -> ProducerFencedError:
        """Count and log a final error; the caller raises the result."""
        self._healthy = False
        self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
        tid = self.transactional_id
        if isinstance(exc, TransactionalIdAuthorizationFailed):
            message = f"not authorised to use transactional id {tid!r} ({type(exc).__name__})"
        else:
            message = (f"producer fenced: another instance uses transactional id {tid!r} "
                       f"({type(exc).__name__}); this one stops publishing")
        log.critical(message)
        return ProducerFencedError(message)

    def _backoff(self, attempt: int) -> float:
        # full jitter keeps many restarting instances from hammering the cluster in step
        return random.uniform(0, min(self._max_backoff_s, 0.2 * 2 ** min(attempt, 16)))

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

        Every failure but a final one (:data:`_FATAL`) is counted, followed by an abort or a
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
                        await self._start_producer()
                    started = time.perf_counter()
                    self._txn_started = time.monotonic()
                    try:
                        await asyncio.wait_for(self._transaction(batches), self._kafka.transaction_timeout_s)
                    finally:
                        self._txn_started = None
                except _FATAL:
                    raise
                except Exception as exc:  # noqa: BLE001 - see docstring: recover, retry
                    self._healthy = False
                    attempt += 1
                    self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
                    delay = self._backoff(attempt)
                    log.warning("transaction of %d batches (%d fills) failed (%s: %s); retrying in %.2fs",
                                len(batches), sum(b.size for b in batches), type(exc).__name__, exc, delay)
                    await self._recover(exc)
                    await asyncio.sleep(delay)
                    continue
            except _FATAL as exc:
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

        Rebuild at once when the producer's own state is broken (:data:`_REBUILD`; a timed-out
        transaction counts, since aiokafka's idempotent producer never expires its batches and
        an abort would queue behind them), else try an abort first. A final error (fencing)
        raised by the abort or the rebuild propagates.
        """
        producer = self._producer
        if producer is None:
            return
        if not isinstance(exc, _REBUILD):
            try:
                await asyncio.wait_for(producer.abort_transaction(), self._kafka.request_timeout_s)
                return
            except _FATAL:
                raise
            except Exception as abort_exc:  # noqa: BLE001 - any failure here means: start over
                log.info("abort failed (%s); rebuilding the producer", type(abort_exc).__name__)
        try:
            await self._rebuild_producer()
        except _FATAL:
            raise
        except Exception as start_exc:  # noqa: BLE001 - the next attempt retries the start
            log.warning("producer rebuild failed (%s: %s); retrying", type(start_exc).__name__, start_exc)
            self._producer = None

    async def _transaction(self, batches: list[SourceBatch]) -> None:
        producer = self._producer
        assert producer is not None
        kafka = self._kafka
        await producer.begin_transaction()
        records = _PartitionBatches(producer)
        futures = records.futures
        checkpoints: dict[str, bytes] = {}
        for batch in batches:
            source = batch.source.encode()
            topic = fills_topic(kafka, batch.venue)
            venue = batch.venue.encode()
            # every header but the fill id is the same for the whole batch
            common = (("venue", venue), ("source", source), ("schema_version", _SCHEMA_VERSION_HEADER),
                      ("content-type", _JSON))
            keys: dict[str, bytes] = {}
            append = records.append
            for fill in batch.fills:
                key = keys.get(fill.instrument)
                if key is None:
                    key = keys[fill.instrument] = f"{batch.source}:{fill.instrument}".encode()
                value = encode(fill)
                headers = [("fill_id", fill.fill_id.encode()), *common]
                if not append(topic, key, value, headers):
                    await records.add(topic, key, value, headers)
            for letter in batch.dead_letters:
                headers = [("venue", venue), ("source", source), ("content-type", _JSON)]
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
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._discard(producer, max(0.2, deadline - loop.time()))
        self._healthy = False
        return drained
