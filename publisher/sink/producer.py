"""The transactional producer's lifecycle: build, start (with retries), discard.

Which errors mean what: :data:`FATAL` (the transactional id is not ours: final),
:data:`REBUILD` (the producer's id/epoch/sequence state is broken: a new producer, from restored
checkpoints),
:data:`RECORD_ERRORS` (a record the cluster refuses: isolate its source), anything else (abort,
and rebuild if the abort fails; the commit loop decides).
"""

from __future__ import annotations

import asyncio
import logging
import random

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidTopicError,
    InvalidTransactionTimeout,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    PolicyViolationError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
    UnsupportedForMessageFormatError,
)

from publisher.config import ConfigError, KafkaConfig
from publisher.kafkaclient import producer_options, rejected_credentials
from publisher.metrics import Metrics
from publisher.secret import Secret
from publisher.sink.aiokafka_shim import tear_down

log = logging.getLogger(__name__)

#: final: another instance owns our transactional id (aiokafka turns the broker's
#: INVALID_PRODUCER_EPOCH on transactional requests into ProducerFenced), or we may not use it
FATAL = (ProducerFenced, TransactionalIdAuthorizationFailed)
#: the producer's id/epoch/sequence state is unusable (an abort cannot fix it): a new producer, and
#: with it restored checkpoints (publisher.sink.commit).
#: OutOfOrderSequenceNumber also kills aiokafka's sender task; a bare InvalidProducerEpoch is the
#: coordinator having bumped our epoch (KIP-588: abortable), not fencing
REBUILD = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, TimeoutError)
#: the cluster refuses a record, not the transaction: retrying the same records fails the same way,
#: so the commit loop isolates the batch of the source that holds it
RECORD_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
                 TopicAuthorizationFailedError, PolicyViolationError, UnsupportedForMessageFormatError)
#: the broker-side transaction timeout exceeds our own deadline by this much, so the coordinator
#: never aborts (and epoch-bumps) a transaction we are still driving: that would read as fencing
_BROKER_TXN_TIMEOUT_MARGIN_S = 30.0


class TransactionalIdLostError(RuntimeError):
    """This instance may no longer use its transactional id and must stop publishing (final:
    `fill-publisher run` exits 3). :attr:`reason` says why."""

    reason = "lost"


class TransactionalIdFencedError(TransactionalIdLostError):
    """Another producer took our transactional id (ProducerFenced)."""

    reason = "fenced"


class TransactionalIdNotAuthorisedError(TransactionalIdLostError):
    """The cluster does not let us use our transactional id (TransactionalIdAuthorizationFailed)."""

    reason = "not_authorised"


#: the name importers used before the reasons were told apart: any lost transactional id
ProducerFencedError = TransactionalIdLostError


def reason(exc: BaseException) -> str:
    """A bounded label value for `fillpub_publish_errors_total{reason}`."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, KafkaError):
        return type(exc).__name__
    return "other"


class TransactionalProducer:
    """Owns the current AIOKafkaProducer of one transactional id: builds, starts, replaces it."""

    def __init__(self, kafka: KafkaConfig, sasl_password: Secret | None, metrics: Metrics, transactional_id: str,
                 *, max_backoff_s: float = 10.0, ssl_key_password: Secret | None = None):
        self._kafka = kafka
        self._sasl_password = sasl_password
        self._ssl_key_password = ssl_key_password
        self._metrics = metrics
        self.transactional_id = transactional_id
        self._max_backoff_s = max_backoff_s
        #: the producer in use; None before the start and after close
        self.current: AIOKafkaProducer | None = None

    def build(self) -> AIOKafkaProducer:
        """A new, unstarted producer with the transactional settings."""
        kafka = self._kafka
        # compression_type and the operator's producer_options come last (kafkaclient.producer_options)
        return AIOKafkaProducer(**producer_options(
            kafka, self._sasl_password, self._ssl_key_password,
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=int((kafka.transaction_timeout_s + _BROKER_TXN_TIMEOUT_MARGIN_S) * 1000),
            # the sink sizes every record below this (publisher.sink.records); aiokafka's own check
            # in send() is the second line
            max_request_size=kafka.max_record_bytes,
            # fills of one poll arrive together: batch them without waiting for stragglers
            linger_ms=0,
            max_batch_size=min(1024 * 1024, kafka.max_record_bytes),
        ))

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Initialise the transactional producer, retrying with backoff until the cluster answers.

        Initialising (InitProducerId) fences any older producer with our transactional id and
        aborts its in-doubt transaction, which is why it must happen before checkpoints are read.
        Raises the :data:`FATAL` error when the id is not ours to use, ConfigError when the broker
        refuses our transaction timeout (its `transaction.max.timeout.ms` is lower), and
        CancelledError when `stop` is set first (callers may also simply cancel the call).
        """
        attempt = 0
        while True:
            try:
                await self.start_once()
                return
            except FATAL:
                raise
            except InvalidTransactionTimeout as exc:
                # the broker's transaction.max.timeout.ms is below what we ask: no retry can fix that
                raise self.timeout_rejected() from exc
            except (TimeoutError, KafkaError, OSError) as exc:
                attempt += 1
                refused = await rejected_credentials(self._kafka, self._sasl_password, self._ssl_key_password) \
                    if isinstance(exc, KafkaConnectionError) else None
                delay = self.backoff(attempt)
                if refused is not None:
                    self._metrics.publish_errors.labels(reason="SaslAuthenticationFailed").inc()
                    log.error("kafka rejected our credentials (%s); retrying in %.1fs", refused, delay)
                else:
                    self._metrics.publish_errors.labels(reason=reason(exc)).inc()
                    log.warning("kafka not reachable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        raise asyncio.CancelledError("stopped before kafka became reachable")
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)

    async def start_once(self) -> None:
        """Build and start a producer (one try); it becomes :attr:`current`."""
        producer = self.build()
        try:
            await asyncio.wait_for(producer.start(), self._kafka.request_timeout_s)
        except BaseException:
            await self.discard(producer, 0.5)  # it never worked: nothing to flush
            raise
        self.current = producer
        log.info("transactional producer ready (transactional id %s)", self.transactional_id)

    async def discard(self, producer: AIOKafkaProducer, timeout_s: float = 2.0) -> None:
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
        await tear_down(producer)

    async def close(self, timeout_s: float) -> None:
        """Stop the current producer (if any) within about `timeout_s`."""
        producer, self.current = self.current, None
        if producer is not None:
            await self.discard(producer, timeout_s)

    def timeout_rejected(self) -> ConfigError:
        """The config error for a broker that refuses our transaction timeout."""
        asked_s = self._kafka.transaction_timeout_s + _BROKER_TXN_TIMEOUT_MARGIN_S
        return ConfigError("kafka.transaction_timeout_s", (
            f"the broker refused the producer's transaction timeout of {asked_s:g}s "
            f"(transaction_timeout_s {self._kafka.transaction_timeout_s:g}s + {_BROKER_TXN_TIMEOUT_MARGIN_S:g}s) "
            f"as longer than its transaction.max.timeout.ms; lower kafka.transaction_timeout_s or raise "
            f"transaction.max.timeout.ms on every broker"))

    def fatal(self, exc: BaseException) -> TransactionalIdLostError:
        """Count and log a final error; the caller raises the result."""
        self._metrics.publish_errors.labels(reason=reason(exc)).inc()
        tid = self.transactional_id
        error: TransactionalIdLostError
        if isinstance(exc, TransactionalIdAuthorizationFailed):
            message = f"not authorised to use transactional id {tid!r} ({type(exc).__name__})"
            error = TransactionalIdNotAuthorisedError(message)
        else:
            message = (f"producer fenced: another instance uses transactional id {tid!r} "
                       f"({type(exc).__name__}); this one stops publishing")
            error = TransactionalIdFencedError(message)
        log.critical(message)
        return error

    def backoff(self, attempt: int) -> float:
        """The delay before try `attempt + 1`."""
        # full jitter keeps many restarting instances from hammering the cluster in step
        return random.uniform(0, min(self._max_backoff_s, 0.2 * 2 ** min(attempt, 16)))
