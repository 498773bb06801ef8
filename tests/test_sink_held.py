"""Held sources (publisher.sink.held): a source whose records Kafka refuses waits a pause that
doubles per failure up to a cap, with jitter, and resets once it commits; its later batches wait
behind the held ones and are released oldest first; only a due source is released; describe()
says who is held and why. Pure bookkeeping on a given clock: no producer, no broker.
"""

from __future__ import annotations

import random

import pytest

from publisher.sink.commit import SourceBatch
from publisher.sink.held import FIRST_PAUSE_S, MAX_PAUSE_S, HeldSources

REFUSED = "MessageSizeTooLargeError: broker says no"


def batch(source: str) -> SourceBatch:
    return SourceBatch(source=source, venue="kalshi", fills=[], dead_letters=[], checkpoint=b"")


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pause its full length: the jitter draws the top of its range."""
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)


def fail_again(held: HeldSources, source: str, now: float = 0.0) -> float:
    """One more failed retry of `source`: its batches released, tried, and held again."""
    batches = held.release(source) if held.holds(source) else [batch(source)]
    return held.hold(source, batches, REFUSED, now)


# -- the pause ----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("no_jitter")
def test_the_pause_doubles_per_failure_up_to_its_cap() -> None:
    held = HeldSources()
    pauses = [fail_again(held, "a") for _ in range(9)]
    assert pauses == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert (FIRST_PAUSE_S, MAX_PAUSE_S) == (5.0, 300.0)


@pytest.mark.usefixtures("no_jitter")
def test_the_pause_stays_at_its_cap_however_long_kafka_refuses() -> None:
    held = HeldSources(first_pause_s=1.0, max_pause_s=60.0)
    pauses = [fail_again(held, "a") for _ in range(200)]  # the exponent is bounded: no overflow
    assert pauses[-1] == 60.0


def test_pauses_are_jittered_down_to_80_percent_so_held_sources_do_not_retry_in_step() -> None:
    held = HeldSources()
    pauses = [held.hold(f"s{i}", [batch(f"s{i}")], REFUSED, 0.0) for i in range(100)]
    assert all(0.8 * FIRST_PAUSE_S <= pause <= FIRST_PAUSE_S for pause in pauses)
    assert len(set(pauses)) > 50


@pytest.mark.usefixtures("no_jitter")
def test_failures_are_counted_per_source() -> None:
    held = HeldSources()
    fail_again(held, "a")
    fail_again(held, "a")
    assert fail_again(held, "b") == FIRST_PAUSE_S


@pytest.mark.usefixtures("no_jitter")
def test_a_commit_starts_the_sources_pause_afresh_and_only_its_own() -> None:
    held = HeldSources()
    for source in ("a", "a", "b", "b"):
        fail_again(held, source)
    held.release("a")
    held.committed({"a"})
    assert fail_again(held, "a") == FIRST_PAUSE_S
    assert fail_again(held, "b") == 4 * FIRST_PAUSE_S


# -- when a source is retried -------------------------------------------------------------------------

def test_a_held_source_is_due_once_its_pause_is_over() -> None:
    held = HeldSources()
    assert held.due(0.0) is None and held.next_retry_in(0.0) is None  # nothing held: no wake-up
    pause = held.hold("a", [batch("a")], REFUSED, 100.0)
    assert held.holds("a") and not held.holds("b")
    assert held.due(100.0 + pause - 0.001) is None and held.due(100.0 + pause) == "a"
    assert held.next_retry_in(100.0) == pytest.approx(pause)
    assert held.next_retry_in(100.0 + pause + 5) == 0.0  # overdue: now, never negative


def test_only_the_due_source_is_released_and_the_others_keep_waiting() -> None:
    held = HeldSources(first_pause_s=10.0)
    pause_a = held.hold("a", [batch("a")], REFUSED, 0.0)
    pause_b = held.hold("b", [batch("b")], REFUSED, 20.0)
    assert held.due(pause_a) == "a"
    held.release("a")
    assert held.due(pause_a) is None and held.holds("b") and not held.holds("a")
    assert held.next_retry_in(pause_a) == pytest.approx(20.0 + pause_b - pause_a)


# -- order ------------------------------------------------------------------------------------------

def test_a_held_sources_later_batches_wait_behind_it_and_are_released_oldest_first() -> None:
    held = HeldSources()
    a1, a2, a3 = batch("a"), batch("a"), batch("a")
    held.hold("a", [a1], REFUSED, 0.0)
    held.add(a2)
    held.add(a3)
    assert held.release("a") == [a1, a2, a3] and not held.holds("a")


def test_a_failed_retry_keeps_the_released_batches_in_their_order() -> None:
    held = HeldSources()
    a1, a2, a3 = batch("a"), batch("a"), batch("a")
    held.hold("a", [a1], REFUSED, 0.0)
    held.add(a2)
    held.hold("a", held.release("a"), REFUSED, 10.0)  # retried together, refused again
    held.add(a3)
    assert held.release("a") == [a1, a2, a3]


def test_holding_a_source_already_held_puts_the_batches_held_now_first() -> None:
    """`hold` is given a source's oldest batches: whatever waits for it already is newer."""
    held = HeldSources()
    older, newer = batch("a"), batch("a")
    held.hold("a", [newer], REFUSED, 0.0)
    held.hold("a", [older], REFUSED, 0.0)
    assert held.release("a") == [older, newer]


# -- describe ------------------------------------------------------------------------------------------

def test_describe_names_each_held_source_and_why_in_name_order() -> None:
    held = HeldSources()
    assert held.describe() is None
    held.hold("zll-main", [batch("zll-main")], "TopicAuthorizationFailedError: no", 0.0)
    held.hold("kalshi-main", [batch("kalshi-main")], REFUSED, 0.0)
    assert held.describe() == f"source kalshi-main: {REFUSED}; source zll-main: TopicAuthorizationFailedError: no"
    held.hold("kalshi-main", held.release("kalshi-main"), "PolicyViolationError: later", 1.0)
    assert held.describe() == ("source kalshi-main: PolicyViolationError: later; "
                               "source zll-main: TopicAuthorizationFailedError: no")
    held.release("kalshi-main")
    held.release("zll-main")
    assert held.describe() is None
