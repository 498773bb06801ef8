"""Unit tests of the poll loop's backoff: exponential growth, jitter, cap, reset, Retry-After floor,
and which backoff a failed poll uses (the auth one starts at 15 s, everything else at the poll
interval), and that a dead letter is sent once however long the venue keeps serving the bad fill.
Integration behaviour is in tests/test_faults_venue.py."""

from __future__ import annotations

import logging
import random
import statistics
import time
from typing import Any

import msgspec
import pytest

from publisher.metrics import Metrics
from publisher.poll import Backoff, Poller
from publisher.state import SourceState
from publisher.venues.base import VenueAdapter
from publisher.venues.errors import PagingError, ResponseTooLarge, VenueDecodeError, VenueError
from publisher.venues.kalshi import decode_fill
from publisher.venues.results import FetchResult, InvalidFill
from publisher.venues.zll import ZllSource

NS = 1_000_000_000


def ceilings(base: float, cap: float, n: int) -> list[float]:
    return [min(cap, base * 2 ** i) for i in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_delays_grow_exponentially_within_jitter_bounds(seed: int) -> None:
    backoff = Backoff(base_s=0.5, cap_s=60.0, rng=random.Random(seed))
    for n, ceiling in enumerate(ceilings(0.5, 60.0, 12), start=1):
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling, (n, delay, ceiling)
        assert backoff.failures == n


def test_jitter_spreads_delays_over_the_upper_half() -> None:
    rng = random.Random(7)
    samples = []
    for _ in range(2000):
        backoff = Backoff(base_s=1.0, cap_s=60.0, rng=rng)
        for _ in range(3):
            delay = backoff.next_delay()
        samples.append(delay)  # third failure: uniform in [2, 4]
    assert min(samples) >= 2.0 and max(samples) <= 4.0
    assert min(samples) < 2.1 and max(samples) > 3.9  # the whole range is used
    assert len({round(s, 3) for s in samples}) > 1000  # not a few fixed values
    assert statistics.mean(samples) == pytest.approx(3.0, abs=0.05)
    assert statistics.pstdev(samples) == pytest.approx(2 / 12 ** 0.5, rel=0.1)  # uniform's stdev


def test_two_sources_failing_together_do_not_retry_in_step() -> None:
    a, b = Backoff(0.5, 60.0), Backoff(0.5, 60.0)  # default, unseeded generators
    pairs = [(a.next_delay(), b.next_delay()) for _ in range(6)]
    assert any(x != y for x, y in pairs)


def test_cap_holds_forever_without_overflow() -> None:
    backoff = Backoff(base_s=0.5, cap_s=60.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(2000)]
    assert all(d <= 60.0 for d in delays)
    assert all(30.0 <= d for d in delays[8:])  # 0.5 * 2**7 = 64 > cap from the 8th failure on


def test_reset_starts_over() -> None:
    backoff = Backoff(base_s=2.0, cap_s=60.0, rng=random.Random(3))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert 1.0 <= backoff.next_delay() <= 2.0


def test_retry_after_is_a_floor_and_still_counts_as_a_failure() -> None:
    backoff = Backoff(base_s=0.5, cap_s=60.0, rng=random.Random(5))
    assert backoff.next_delay(at_least_s=7.0) == 7.0  # far above the first ceiling (0.5)
    assert backoff.failures == 1
    # below the ceiling, Retry-After changes nothing: jitter still applies (second ceiling: 1.0)
    assert 0.5 <= backoff.next_delay(at_least_s=0.1) <= 1.0
    # a Retry-After above the cap is honoured: the venue knows best
    assert backoff.next_delay(at_least_s=120.0) == 120.0


# -- which backoff a failed poll uses ------------------------------------------------------------


class _Failing(VenueAdapter):
    venue = "zll"

    def __init__(self, errors: list[BaseException]):
        self.errors = errors

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
        if self.errors:
            raise self.errors.pop(0)
        return FetchResult()


class _NoSink:
    def submit(self, batch: Any) -> None:  # nothing new arrives in these tests
        raise AssertionError("no batch expected")


def _poller(errors: list[BaseException], **kwargs: Any) -> tuple[Poller, Metrics]:
    source = ZllSource(name="zll-unit", base_url="http://127.0.0.1:9", subaccount_index=0,
                       api_key_env="UNUSED", poll_interval_s=0.2)
    metrics = Metrics()
    poller = Poller(source, _Failing(errors), SourceState(source, None, time.time_ns()),
                    _NoSink(), metrics.source("zll", "zll-unit"), **kwargs)  # type: ignore[arg-type]
    return poller, metrics


def _errors(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "fillpub_poll_errors_total", {"venue": "zll", "source": "zll-unit", "reason": reason})
    return value or 0.0


async def test_poll_failures_back_off_by_reason_and_success_resets() -> None:
    poller, metrics = _poller([
        VenueError("http_5xx", "HTTP 500"),
        VenueError("timeout", "request timed out"),
        VenueError("http_429", "HTTP 429", retry_after_s=5.0),
        VenueError("auth", "HTTP 401"),
        VenueError("auth", "HTTP 401"),
        ValueError("adapter bug"),
    ])
    # the ordinary backoff starts at max(0.5, poll_interval_s) and grows across reasons
    assert 0.25 <= await poller.poll_once() <= 0.5  # type: ignore[operator]
    assert 0.5 <= await poller.poll_once() <= 1.0  # type: ignore[operator]
    assert await poller.poll_once() == 5.0  # Retry-After above the third ceiling (2.0)
    # credentials rejected: a slow, separate backoff (a human must act), starting at 15 s
    assert 7.5 <= await poller.poll_once() <= 15.0  # type: ignore[operator]
    assert 15.0 <= await poller.poll_once() <= 30.0  # type: ignore[operator]
    # an unexpected adapter exception is contained and counted as decode
    assert 2.0 <= await poller.poll_once() <= 4.0  # type: ignore[operator]  # 4th ordinary failure
    assert await poller.poll_once() is None  # success resets both backoffs
    assert poller._backoff.failures == 0 and poller._auth_backoff.failures == 0
    for reason, count in (("http_5xx", 1), ("timeout", 1), ("http_429", 1), ("auth", 2), ("decode", 1),
                          ("connect", 0), ("http_4xx", 0)):
        assert _errors(metrics, reason) == count, reason


def _failures(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "fillpub_poll_failures_total", {"venue": "zll", "source": "zll-unit", "kind": kind})
    return value or 0.0


async def test_each_failure_behind_decode_is_counted_and_logged_by_its_kind(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = [
        VenueDecodeError("not JSON"),
        ResponseTooLarge("the answer exceeds 4096 bytes"),
        PagingError("a cursor came back"),
        RecursionError("nested too deeply"),
        KeyError("adapter bug"),
        VenueError("decode", "an adapter's own decode error"),
        VenueError("http_5xx", "HTTP 500"),
    ]
    poller, metrics = _poller(errors)
    with caplog.at_level(logging.WARNING, logger="publisher.poll"):
        for _ in range(7):
            assert await poller.poll_once() is not None
    kinds = {"unreadable_answer": 3, "answer_too_large": 1, "paging_loop": 1, "adapter_bug": 1,
             "result_not_handed_over": 0, "loop_failure": 0}
    assert {kind: _failures(metrics, kind) for kind in kinds} == kinds
    assert _errors(metrics, "decode") == sum(kinds.values()) and _errors(metrics, "http_5xx") == 1
    logged = [getattr(record, "kind", None) for record in caplog.records]
    assert logged == ["unreadable_answer", "answer_too_large", "paging_loop", "unreadable_answer", "adapter_bug",
                      "unreadable_answer", None]


async def test_backoffs_can_be_injected() -> None:
    poller, _ = _poller([VenueError("auth", "HTTP 401")] * 2, auth_backoff=Backoff(0.01, 0.02))
    assert await poller.poll_once() <= 0.01  # type: ignore[operator]
    assert await poller.poll_once() <= 0.02  # type: ignore[operator]


# -- dead letters across polls -------------------------------------------------------------------


class _Serving(VenueAdapter):
    """Serves the same page on every poll, as a venue does while a fill stays in its answers."""

    venue = "zll"

    def __init__(self, invalid: list[InvalidFill]):
        self.invalid = invalid

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
        return FetchResult(invalid=list(self.invalid))


class _Collecting:
    def __init__(self) -> None:
        self.letters: list[Any] = []

    def submit(self, batch: Any) -> None:
        self.letters.extend(batch.dead_letters)


async def test_dead_letter_sent_once_however_long_the_venue_serves_it() -> None:
    """A bad fill with a readable time is dated like a good one: once the overlap window has moved
    past it, it is ignored instead of being dead-lettered again."""
    now = [1_000 * NS]
    dated = InvalidFill(key="dated", error="price is not a decimal", raw=msgspec.Raw(b"{}"),
                        executed_at_ns=now[0] - 1 * NS)
    old = InvalidFill(key="ancient", error="bad side", raw=msgspec.Raw(b"{}"), executed_at_ns=now[0] - 100 * NS)
    source = ZllSource(name="zll-unit", base_url="http://127.0.0.1:9", subaccount_index=0,
                       api_key_env="UNUSED", lookback_s=3)
    sink = _Collecting()
    poller = Poller(source, _Serving([dated, old]), SourceState(source, None, now[0]), sink,  # type: ignore[arg-type]
                    Metrics().source("zll", "zll-unit"), wall_clock_ns=lambda: now[0])
    for _ in range(40):  # 20 s of polls, the window (3 s) long past the fill
        assert await poller.poll_once() is None
        now[0] += NS // 2
    assert [letter.raw for letter in sink.letters] == [dated.raw]  # the old one predates the window


def test_kalshi_dead_letter_carries_the_fills_time_when_readable() -> None:
    good_time = {"created_time": "2026-06-30T12:00:00.5Z", "ts": 1782820800}
    bad_price = decode_fill(msgspec.Raw(msgspec.json.encode(
        {"fill_id": "f1", "yes_price_dollars": "n/a", **good_time})), source="k", observed_at_ns=0)
    assert isinstance(bad_price, InvalidFill) and bad_price.key == "f1"
    assert bad_price.executed_at_ns == 1782820800_500_000_000
    undecodable = decode_fill(msgspec.Raw(b'{"trade_id": "t1", "count": "many", "ts": 1782820800}'),
                              source="k", observed_at_ns=0)
    assert isinstance(undecodable, InvalidFill) and undecodable.key == "t1"
    assert undecodable.executed_at_ns == 1782820800 * NS
    for broken_time in ({"created_time": "yesterday"}, {"ts": -5}, {}):
        letter = decode_fill(msgspec.Raw(msgspec.json.encode({"fill_id": "f2", **broken_time})),
                             source="k", observed_at_ns=0)
        assert isinstance(letter, InvalidFill) and letter.executed_at_ns is None, broken_time
