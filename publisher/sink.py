"""The transactional Kafka sink: fills, dead letters and checkpoints, all or nothing.

Pollers hand the sink :class:`SourceBatch`es. One loop takes every batch waiting (group commit: a
transaction may carry several sources' polls), writes their fills, dead letters and each source's
newest checkpoint in ONE Kafka transaction, and commits. Only then does it tell the batches'
owners (`on_commit`), so published counters and lag describe committed data only.

Failure handling, in the order it matters:
- a batch handed to the sink is never dropped: a failed transaction is aborted (or the producer is
  rebuilt, which aborts it on the broker) and the same batches are retried with backoff until they
  commit or the process ends; a crash loses nothing because the checkpoint did not move either;
- memory is bounded: :meth:`wait_for_capacity` holds pollers back while `max_pending_fills` fetched
  fills are waiting, so an outage pauses polling instead of buffering without limit;
- fencing (another instance took our transactional id) is final: :class:`ProducerFencedError` is
  raised out of :meth:`run` and the process exits non-zero, so a zombie never publishes.

The sink knows Kafka and the contract's record layout (topic, key, headers), nothing about venues.
"""

from __future__ import annotations

import asyncio
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
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from publisher.config import KafkaConfig, fills_topic
from publisher.event import SCHEMA_VERSION, DeadLetter, FillEvent, encode
from publisher.kafkaclient import CHECKPOINT_MAX_MESSAGE_BYTES, client_options
from publisher.metrics import Metrics
from publisher.secret import Secret

log = logging.getLogger(__name__)

_SCHEMA_VERSION_HEADER = str(SCHEMA_VERSION).encode()
_JSON = b"application/json"
_FATAL = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


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


class TransactionalSink:
    """Group-committing transactional producer for fills, dead letters and checkpoints."""

    def __init__(
        self,
        kafka: KafkaConfig,
        sasl_password: Secret | None,
        metrics: Metrics,
        *,
        max_backoff_s: float = 30.0,
    ):
        self._kafka = kafka
        self._sasl_password = sasl_password
        self._metrics = metrics
        self._max_backoff_s = max_backoff_s
        self._queue: deque[SourceBatch] = deque()
        self._work = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._pending = 0
        self._producer: AIOKafkaProducer | None = None
        self._closing = False
        #: True while the producer is initialised and the last transaction attempt succeeded
        self.healthy = False

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
        return AIOKafkaProducer(
            **client_options(kafka, self._sasl_password),
            transactional_id=kafka.transactional_id_prefix,
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=int(kafka.transaction_timeout_s * 1000),
            max_request_size=CHECKPOINT_MAX_MESSAGE_BYTES + 65536,
            # fills of one poll arrive together: batch them without waiting for stragglers
            linger_ms=0,
            max_batch_size=1024 * 1024,
        )

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Initialise the transactional producer, retrying with backoff until the cluster answers.

        Initialising (InitProducerId) fences any older producer with our transactional id and
        aborts its in-doubt transaction, which is why it must happen before checkpoints are read.
        """
        attempt = 0
        while True:
            try:
                await self._start_producer()
                return
            except _FATAL as exc:
                raise ProducerFencedError(str(exc)) from exc
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                attempt += 1
                self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
                delay = self._backoff(attempt)
                log.warning("kafka not reachable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        raise asyncio.CancelledError("stopped before kafka became reachable")
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)

    async def _start_producer(self) -> None:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self._kafka.request_timeout_s)
        except BaseException:
            await self._stop_quietly(producer)
            raise
        self._producer = producer
        self.healthy = True
        log.info("transactional producer ready (transactional id %s)", self._kafka.transactional_id_prefix)

    async def _stop_quietly(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except Exception as exc:  # noqa: BLE001 - it is being discarded anyway
            log.debug("discarding producer: %s", exc)

    async def _rebuild_producer(self) -> None:
        """Drop the producer and make a new one (which aborts our open transaction on the broker)."""
        old, self._producer = self._producer, None
        if old is not None:
            await self._stop_quietly(old)
        await self._start_producer()

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
        attempt = 0
        while True:
            try:
                if self._producer is None:
                    await self._start_producer()
                started = time.perf_counter()
                await asyncio.wait_for(self._transaction(batches), self._kafka.transaction_timeout_s)
            except _FATAL as exc:
                self.healthy = False
                self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
                log.critical("producer fenced: another instance uses transactional id %r; stopping (%s)",
                             self._kafka.transactional_id_prefix, type(exc).__name__)
                raise ProducerFencedError(str(exc)) from exc
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                self.healthy = False
                attempt += 1
                self._metrics.publish_errors.labels(reason=_reason(exc)).inc()
                delay = self._backoff(attempt)
                log.warning("transaction of %d batches failed (%s: %s); retrying in %.2fs",
                            len(batches), type(exc).__name__, exc, delay)
                await self._recover()
                await asyncio.sleep(delay)
                continue
            committed_ns = time.time_ns()
            self._metrics.commit_duration.observe(time.perf_counter() - started)
            self.healthy = True
            self._add_pending(-sum(b.size for b in batches))
            for batch in batches:
                batch.on_commit(committed_ns)
            return

    async def _recover(self) -> None:
        """Leave the failed transaction behind: abort it, or rebuild the producer if that fails."""
        producer = self._producer
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.abort_transaction(), self._kafka.request_timeout_s)
            return
        except Exception as exc:  # noqa: BLE001 - any failure here means: start over
            log.info("abort failed (%s); rebuilding the producer", type(exc).__name__)
        try:
            await self._rebuild_producer()
        except _FATAL:
            raise
        except Exception as exc:  # noqa: BLE001 - the next attempt retries the start
            log.warning("producer rebuild failed (%s: %s)", type(exc).__name__, exc)
            self._producer = None

    async def _transaction(self, batches: list[SourceBatch]) -> None:
        producer = self._producer
        assert producer is not None
        kafka = self._kafka
        await producer.begin_transaction()
        futures = []
        checkpoints: dict[str, bytes] = {}
        for batch in batches:
            source = batch.source.encode()
            topic = fills_topic(kafka, batch.venue)
            venue = batch.venue.encode()
            prefix = batch.source + ":"
            for fill in batch.fills:
                headers = [
                    ("fill_id", fill.fill_id.encode()),
                    ("venue", venue),
                    ("source", source),
                    ("schema_version", _SCHEMA_VERSION_HEADER),
                    ("content-type", _JSON),
                ]
                futures.append(await producer.send(
                    topic, encode(fill), key=(prefix + fill.instrument).encode(), headers=headers))
            for letter in batch.dead_letters:
                headers = [("venue", venue), ("source", source), ("content-type", _JSON)]
                futures.append(await producer.send(kafka.dlq_topic, encode(letter), key=source, headers=headers))
            checkpoints[batch.source] = batch.checkpoint  # a later batch of a source supersedes
        for name, checkpoint in checkpoints.items():
            futures.append(await producer.send(kafka.checkpoint_topic, checkpoint, key=name.encode()))
        await asyncio.gather(*futures)
        await producer.commit_transaction()

    # ------------------------------------------------------------------ shutdown

    async def close(self, runner: asyncio.Task[None] | None, timeout_s: float) -> bool:
        """Commit what is queued (within `timeout_s`), then stop the producer.

        Returns True when everything submitted was committed.
        """
        self._closing = True
        self._work.set()
        drained = True
        if runner is not None and not runner.done():
            done, _ = await asyncio.wait({runner}, timeout=timeout_s)
            if not done:
                drained = False
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        drained = drained and not self._queue
        if self._producer is not None:
            await self._stop_quietly(self._producer)
            self._producer = None
        self.healthy = False
        return drained
