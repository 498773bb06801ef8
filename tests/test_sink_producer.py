"""The transactional producer's lifecycle (publisher.sink.producer) against the fake producer of
tests/sinkfakes.py: what each aiokafka error means (FATAL, REBUILD, RECORD_ERRORS, the rest
aborted), the bounded `reason` label, the settings a producer is built with, start() retrying with
backoff until the cluster answers (or `stop` is set), a refused transaction timeout as a config
error, fatal() telling fencing from authorisation, discard() tearing a wedged producer down, and
the backoff's growth. Fast: no broker, no network.
"""

from __future__ import annotations

import asyncio
import logging
import random
from types import SimpleNamespace

import pytest
from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorNotAvailableError,
    InvalidProducerEpoch,
    InvalidTopicError,
    InvalidTransactionTimeout,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    PolicyViolationError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
    UnsupportedForMessageFormatError,
)

import publisher.sink.producer
from publisher.config import ConfigError, KafkaConfig
from publisher.config._errors import SettingProblem
from publisher.metrics import Metrics
from publisher.sink.producer import (
    FATAL,
    REBUILD,
    RECORD_ERRORS,
    ProducerFencedError,
    TransactionalIdFencedError,
    TransactionalIdLostError,
    TransactionalIdNotAuthorisedError,
    TransactionalProducer,
    reason,
)
from tests.sinkfakes import World, install
from tests.test_sink_commit import until

KAFKA = KafkaConfig(bootstrap_servers="fake:9092", request_timeout_s=0.2, transaction_timeout_s=60)
TID = "fill-publisher-3"


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return install(monkeypatch)


def producers(kafka: KafkaConfig = KAFKA, metrics: Metrics | None = None, *,
              max_backoff_s: float = 0.01) -> TransactionalProducer:
    return TransactionalProducer(kafka, None, metrics or Metrics(), TID, max_backoff_s=max_backoff_s)


def errors(metrics: Metrics, label: str) -> float:
    return metrics.registry.get_sample_value("fillpub_publish_errors_total", {"reason": label}) or 0.0


def backoff_always(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[int]:
    """Make every backoff `delay` long; returns the attempts it was asked for."""
    attempts: list[int] = []

    def fixed(_self: TransactionalProducer, attempt: int) -> float:
        attempts.append(attempt)
        return delay

    monkeypatch.setattr(TransactionalProducer, "backoff", fixed)
    return attempts


# -- what each error means ----------------------------------------------------------------------------

def meanings(exc: BaseException) -> set[str]:
    classes = {"fatal": FATAL, "rebuild": REBUILD, "record": RECORD_ERRORS}
    return {name for name, types in classes.items() if isinstance(exc, types)}


@pytest.mark.parametrize(("error", "meaning"), [
    # another instance took our id (aiokafka's name for a transactional INVALID_PRODUCER_EPOCH), or
    # the cluster does not let us use it: final
    (ProducerFenced(), "fatal"),
    (TransactionalIdAuthorizationFailed(), "fatal"),
    # the producer's id/epoch/sequence state is unusable, or a transaction outlived its deadline:
    # a new producer, from restored checkpoints
    (OutOfOrderSequenceNumber(), "rebuild"),
    (UnknownProducerId(), "rebuild"),
    (InvalidProducerEpoch(), "rebuild"),  # the coordinator bumped our epoch (KIP-588): not fencing
    (TimeoutError(), "rebuild"),
    # the cluster refuses a record: its source is isolated
    (MessageSizeTooLargeError(), "record"),
    (RecordTooLargeError(), "record"),
    (RecordListTooLargeError(), "record"),
    (InvalidTopicError(), "record"),
    (TopicAuthorizationFailedError(), "record"),
    (PolicyViolationError(), "record"),
    (UnsupportedForMessageFormatError(), "record"),
    # anything else: abort and retry the same batches (aiokafka's own KafkaTimeoutError is no
    # builtin TimeoutError: a metadata wait or a full accumulator, not our deadline)
    (KafkaConnectionError(), None),
    (KafkaTimeoutError(), None),
    (RequestTimedOutError(), None),
    (NotLeaderForPartitionError(), None),
    (CoordinatorNotAvailableError(), None),
    (ConcurrentTransactions(), None),
    (KafkaError(), None),
    (AssertionError("illegal transition"), None),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value))
def test_each_error_has_at_most_one_meaning(error: BaseException, meaning: str | None) -> None:
    assert meanings(error) == ({meaning} if meaning else set())


@pytest.mark.parametrize(("error", "label"), [
    (TimeoutError(), "timeout"),
    (KafkaConnectionError("broker 7 at 10.0.0.7:9092 went away"), "KafkaConnectionError"),
    (ProducerFenced(), "ProducerFenced"),
    (KafkaError("anything"), "KafkaError"),
    (ValueError("x"), "other"),
    (AssertionError("illegal transition"), "other"),
    (ConnectionRefusedError(), "other"),
], ids=lambda value: repr(value) if isinstance(value, str) else type(value).__name__)
def test_reason_is_a_bounded_label_never_the_error_text(error: BaseException, label: str) -> None:
    assert reason(error) == label


# -- the producer's settings --------------------------------------------------------------------------

def test_the_producer_is_built_transactional_idempotent_and_acks_all(world: World) -> None:
    kafka = KafkaConfig(bootstrap_servers="a:9092,b:9092", request_timeout_s=7, transaction_timeout_s=45,
                        max_record_bytes=2_000_000)
    TransactionalProducer(kafka, None, Metrics(), TID).build()
    options = world.producers[0].options
    assert options["bootstrap_servers"] == "a:9092,b:9092" and options["request_timeout_ms"] == 7000
    assert options["transactional_id"] == TID and options["enable_idempotence"] is True and options["acks"] == "all"
    # the broker's timeout outlasts our own deadline by 30 s: it never aborts a transaction we drive
    assert options["transaction_timeout_ms"] == 75_000
    assert options["max_request_size"] == 2_000_000
    assert options["linger_ms"] == 0 and options["max_batch_size"] == 1024 * 1024
    assert "compression_type" not in options


def test_a_record_batch_is_never_larger_than_max_record_bytes_by_default(world: World) -> None:
    TransactionalProducer(KafkaConfig(bootstrap_servers="fake:9092", max_record_bytes=65536), None, Metrics(), TID).build()
    assert world.producers[0].options["max_batch_size"] == 65536


def test_the_operators_producer_options_are_applied_last(world: World) -> None:
    kafka = KafkaConfig(bootstrap_servers="fake:9092", compression_type="gzip",
                        producer_options={"linger_ms": 5, "max_batch_size": 4096, "retry_backoff_ms": 7})
    TransactionalProducer(kafka, None, Metrics(), TID).build()
    options = world.producers[0].options
    assert (options["linger_ms"], options["max_batch_size"], options["retry_backoff_ms"]) == (5, 4096, 7)
    assert options["compression_type"] == "gzip" and options["enable_idempotence"] is True


def test_the_operator_cannot_make_a_record_batch_larger_than_max_record_bytes() -> None:
    """A batch above the topics' max.message.bytes is refused by the broker on every retry: its
    source would be held for good. max_record_bytes is the largest batch the publisher sends."""
    KafkaConfig(bootstrap_servers="fake:9092", max_record_bytes=65536, producer_options={"max_batch_size": 65536})
    with pytest.raises(SettingProblem) as raised:
        KafkaConfig(bootstrap_servers="fake:9092", max_record_bytes=65536, producer_options={"max_batch_size": 65537})
    assert raised.value.field == "producer_options.max_batch_size" and "max_record_bytes" in raised.value.problem


# -- start --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("failures", "labels"), [
    ([KafkaConnectionError("down"), KafkaConnectionError("down")], ["KafkaConnectionError"] * 2),
    (["hang"], ["timeout"]),  # a start that does not answer within request_timeout_s
    ([ConnectionRefusedError()], ["other"]),
], ids=["connection", "hang", "oserror"])
async def test_start_retries_with_backoff_until_the_cluster_answers(
        world: World, monkeypatch: pytest.MonkeyPatch, failures: list[BaseException | str], labels: list[str]) -> None:
    attempts = backoff_always(monkeypatch, 0.0)
    world.faults["start"] = list(failures)
    metrics = Metrics()
    lifecycle = producers(metrics=metrics)
    await lifecycle.start()
    assert attempts == list(range(1, len(failures) + 1))
    assert lifecycle.current is world.producers[-1] and len(world.producers) == len(failures) + 1
    # every failed producer was stopped: none is left with a connection or a sender task
    assert [entry[:2] for entry in world.log if entry[0] == "stop"] == [("stop", i) for i in range(len(failures))]
    for label in set(labels):
        assert errors(metrics, label) == labels.count(label)


async def test_start_stops_waiting_to_retry_when_stop_is_set(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backoff_always(monkeypatch, 60.0)
    world.faults["start"] = [KafkaConnectionError("down")] * 10
    stop = asyncio.Event()
    lifecycle = producers()
    task = asyncio.create_task(lifecycle.start(stop))
    await until(lambda: world.calls("stop") == 1)  # the first try failed and was discarded
    stop.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)  # not the 60 s backoff
    assert world.calls("start") == 1 and lifecycle.current is None


async def test_start_with_stop_already_set_gives_up_after_one_try(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backoff_always(monkeypatch, 60.0)
    world.faults["start"] = [KafkaConnectionError("down")]
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(producers().start(stop), 1.0)
    assert world.calls("start") == 1


async def test_a_set_stop_does_not_undo_a_start_that_worked(world: World) -> None:
    stop = asyncio.Event()
    stop.set()
    lifecycle = producers()
    await lifecycle.start(stop)
    assert lifecycle.current is world.producers[0]


@pytest.mark.parametrize("error", [ProducerFenced(), TransactionalIdAuthorizationFailed()], ids=lambda error: type(error).__name__)
async def test_start_does_not_retry_a_transactional_id_that_is_not_ours(world: World, error: KafkaError) -> None:
    world.faults["start"] = [error]
    lifecycle = producers()
    with pytest.raises(type(error)):
        await lifecycle.start()
    assert world.calls("start") == 1 and world.calls("stop") == 1 and lifecycle.current is None


async def test_a_refused_transaction_timeout_is_a_config_error_naming_the_setting(world: World) -> None:
    world.faults["start"] = [InvalidTransactionTimeout()]
    lifecycle = producers()
    with pytest.raises(ConfigError) as raised:
        await lifecycle.start()
    error = raised.value
    assert error.field == "kafka.transaction_timeout_s" and isinstance(error.__cause__, InvalidTransactionTimeout)
    # it says what was asked (60 s + the 30 s margin) and both ways out
    assert "transaction timeout of 90s" in error.problem and "transaction_timeout_s 60s + 30s" in error.problem
    assert "lower kafka.transaction_timeout_s or raise transaction.max.timeout.ms" in error.problem
    assert world.calls("start") == 1 and lifecycle.current is None  # no retry can fix it


async def test_refused_credentials_are_counted_and_logged_as_such(
        world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka reports a refused SASL login as a bare KafkaConnectionError; the start looks why,
    but only after such an error (a timeout or a refused TCP connection is no login problem)."""
    asked: list[KafkaConfig] = []

    async def refused(kafka: KafkaConfig, *_secrets: object) -> str:
        asked.append(kafka)
        return "SASL SCRAM-SHA-512 login of user 'fp' refused: bad credentials"

    monkeypatch.setattr(publisher.sink.producer, "rejected_credentials", refused)
    backoff_always(monkeypatch, 0.0)
    world.faults["start"] = [ConnectionRefusedError(), KafkaConnectionError("down")]
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="publisher.sink.producer"):
        await producers(metrics=metrics).start()
    assert asked == [KAFKA]
    assert errors(metrics, "SaslAuthenticationFailed") == 1 and errors(metrics, "KafkaConnectionError") == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "kafka rejected our credentials (SASL SCRAM-SHA-512 login of user 'fp' refused: bad credentials); retrying in 0.0s"]


# -- discard and close --------------------------------------------------------------------------------

def wedge(world: World, producer: object) -> tuple[asyncio.Task[None], list[BaseException]]:
    """Give `producer` what tear_down reaches for in aiokafka's (sender task, accumulator), wedged
    like one whose broker is gone: stop() flushes forever, the sender task never ends on its own.
    Returns the sender task and the errors the accumulator's batches were failed with."""
    world.faults["stop"] = ["hang"]
    failed: list[BaseException] = []
    sender_task = asyncio.create_task(asyncio.Event().wait())
    producer._sender = SimpleNamespace(sender_task=sender_task)  # type: ignore[attr-defined]
    producer._message_accumulator = SimpleNamespace(fail_all=failed.append)  # type: ignore[attr-defined]
    return sender_task, failed


async def test_discard_tears_a_wedged_producer_down_within_its_timeout(world: World) -> None:
    lifecycle = producers()
    producer = lifecycle.build()
    sender_task, failed = wedge(world, producer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await lifecycle.discard(producer, 0.1)
    assert loop.time() - started < 0.5
    # its batches failed (which ends a pending flush), its sender task cancelled, connections closed
    assert len(failed) == 1 and isinstance(failed[0], KafkaError)
    assert sender_task.cancelled() and world.log == [("stop", 0), ("close", 0)]


async def test_discard_tears_down_a_producer_whose_stop_fails(world: World) -> None:
    world.faults["stop"] = [KafkaConnectionError("gone")]
    lifecycle = producers()
    await lifecycle.discard(lifecycle.build())
    assert world.log == [("stop", 0), ("close", 0)]


async def test_discard_leaves_a_producer_that_stops_cleanly_alone(world: World) -> None:
    lifecycle = producers()
    await lifecycle.discard(lifecycle.build())
    assert world.log == [("stop", 0)]


async def test_a_start_that_hangs_is_discarded_without_waiting_for_its_flush(world: World) -> None:
    world.faults["start"] = ["hang"]
    world.faults["stop"] = ["hang"]
    lifecycle = producers()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await lifecycle.start_once()
    # request_timeout_s to start, then half a second to stop before the teardown
    assert loop.time() - started < KAFKA.request_timeout_s + 1.0
    assert world.log == [("start", 0), ("stop", 0), ("close", 0)] and lifecycle.current is None


async def test_close_discards_the_current_producer_once(world: World) -> None:
    lifecycle = producers()
    await lifecycle.close(1.0)  # nothing started: nothing to stop
    await lifecycle.start()
    assert lifecycle.current is world.producers[0]
    await lifecycle.close(1.0)
    await lifecycle.close(1.0)
    assert lifecycle.current is None and world.calls("stop") == 1


# -- final errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "lost", "label", "message"), [
    (ProducerFenced(), TransactionalIdFencedError, "fenced",
     f"producer fenced: another instance uses transactional id {TID!r} (ProducerFenced); this one stops publishing"),
    (TransactionalIdAuthorizationFailed(), TransactionalIdNotAuthorisedError, "not_authorised",
     f"not authorised to use transactional id {TID!r} (TransactionalIdAuthorizationFailed)"),
], ids=["fenced", "not-authorised"])
def test_fatal_tells_fencing_from_authorisation_and_logs_critical_with_the_transactional_id(
        caplog: pytest.LogCaptureFixture, error: KafkaError, lost: type[TransactionalIdLostError], label: str,
        message: str) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.CRITICAL, logger="publisher.sink.producer"):
        result = producers(metrics=metrics).fatal(error)
    assert type(result) is lost and result.reason == label and str(result) == message
    assert isinstance(result, ProducerFencedError)  # what app.py turns into exit 3
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [message]
    assert errors(metrics, type(error).__name__) == 1


# -- backoff ------------------------------------------------------------------------------------------

def test_backoff_doubles_from_0_4_s_to_its_cap_with_full_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    ranges: list[tuple[float, float]] = []

    def upper(low: float, high: float) -> float:
        ranges.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", upper)
    lifecycle = producers(max_backoff_s=5.0)
    assert [lifecycle.backoff(attempt) for attempt in range(1, 7)] == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert lifecycle.backoff(10**6) == 5.0  # no overflow however long the outage
    # full jitter: anywhere from nothing up to the ceiling, so restarting instances spread out
    assert {low for low, _ in ranges} == {0}


def test_backoff_draws_spread_below_the_ceiling() -> None:
    draws = [producers(max_backoff_s=10.0).backoff(3) for _ in range(200)]
    assert all(0 <= draw <= 1.6 for draw in draws) and len(set(draws)) > 100
