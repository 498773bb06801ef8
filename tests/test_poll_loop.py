"""The poll loop survives anything: a poll result that cannot be checkpointed, an adapter bug and a
failure of the loop itself each give a log line with the traceback, a `decode` error count and a
fresh start of the loop from the last checkpoint handed to the sink, so no fill of a failed poll
is lost (it is read again) and none is handed over twice."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import pytest

from publisher.event import FillEvent
from publisher.metrics import Metrics
from publisher.poll import Backoff, Poller
from publisher.state import SourceState
from publisher.venues.base import VenueAdapter
from publisher.venues.results import FetchResult
from publisher.venues.zll import ZllSource
from tests.harness.stack import wait_until

NS = 1_000_000_000


def fill(fill_id: str, executed_at_ns: int) -> FillEvent:
    return FillEvent(venue="zll", source="zll-loop", fill_id=fill_id, order_id="o", instrument="BTC-PERP", side="buy",
                     price="1", quantity="1", fee=None, fee_currency="USDC", liquidity=None,
                     executed_at_ns=executed_at_ns, observed_at_ns=executed_at_ns)


class _Script(VenueAdapter):
    """Serves every fill it was given on every poll, with the paging state of the poll's turn."""

    venue = "zll"

    def __init__(self, fills: list[FillEvent], paging_states: list[Any]):
        self.fills = fills
        self.paging_states = paging_states
        self.polls = 0

    async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
        state = self.paging_states[min(self.polls, len(self.paging_states) - 1)]
        self.polls += 1
        return FetchResult(fills=list(self.fills), paging_state=state)


class _Sink:
    def __init__(self, fail_capacity: int = 0) -> None:
        self.fills: list[str] = []
        self.fail_capacity = fail_capacity

    def submit(self, batch: Any) -> None:
        self.fills += [f.fill_id for f in batch.fills]

    async def wait_for_capacity(self) -> None:
        if self.fail_capacity:
            self.fail_capacity -= 1
            raise RuntimeError("the sink's gate broke")


def _poller(adapter: VenueAdapter, sink: _Sink, now_ns: int) -> tuple[Poller, Metrics]:
    source = ZllSource(name="zll-loop", base_url="http://127.0.0.1:9", subaccount_index=0, api_key_env="UNUSED",
                       poll_interval_s=0.01, lookback_s=60)
    metrics = Metrics()
    poller = Poller(source, adapter, SourceState(source, None, now_ns), sink,  # type: ignore[arg-type]
                    metrics.source("zll", "zll-loop"), backoff=Backoff(0.01, 0.02, random.Random(1)))
    return poller, metrics


def _decode_errors(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(
        "fillpub_poll_errors_total", {"venue": "zll", "source": "zll-loop", "reason": "decode"}) or 0.0


def _failures(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value(
        "fillpub_poll_failures_total", {"venue": "zll", "source": "zll-loop", "kind": kind}) or 0.0


async def test_a_poll_that_cannot_be_checkpointed_is_read_again_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    now = time.time_ns()
    # the first poll's paging state overflows the checkpoint encoder (msgspec: ints beyond 64 bits)
    adapter = _Script([fill("f1", now - NS), fill("f2", now - 2 * NS)], [2**70, 7])
    sink = _Sink()
    poller, metrics = _poller(adapter, sink, now)
    with caplog.at_level(logging.ERROR):
        assert await poller.poll_once() is not None
    assert sink.fills == [] and _decode_errors(metrics) == 1
    [record] = [r for r in caplog.records if r.name == "publisher.poll"]
    assert "the poll's result could not be handed to the sink" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is OverflowError
    assert _failures(metrics, "result_not_handed_over") == 1 and record.kind == "result_not_handed_over"  # type: ignore[attr-defined]
    assert poller.state.paging_state is None  # rewound: nothing of the failed poll stays
    # the next poll hands both fills over: the failed poll's admission into the window was undone
    assert await poller.poll_once() is None
    assert sorted(sink.fills) == ["f1", "f2"]
    assert await poller.poll_once() is None  # and never again
    assert sorted(sink.fills) == ["f1", "f2"] and poller.state.paging_state == 7


async def test_a_failure_of_the_loop_itself_restarts_it(caplog: pytest.LogCaptureFixture) -> None:
    now = time.time_ns()
    adapter = _Script([fill("f1", now - NS)], [None])
    sink = _Sink(fail_capacity=2)
    poller, metrics = _poller(adapter, sink, now)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await wait_until(lambda: sink.fills == ["f1"] and adapter.polls >= 3, "polling after two loop failures",
                     timeout_s=5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert task.exception() is None
    assert _decode_errors(metrics) == 2
    failures = [r for r in caplog.records if "the poll loop failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info is not None for r in failures)
    assert _failures(metrics, "loop_failure") == 2 and all(r.kind == "loop_failure" for r in failures)  # type: ignore[attr-defined]


async def test_an_adapter_bug_is_logged_as_one(caplog: pytest.LogCaptureFixture) -> None:
    class _Buggy(VenueAdapter):
        venue = "zll"

        async def fetch(self, since_ns: int, paging_state: Any, clock_ns: Any, published: Any = None) -> FetchResult:
            return None.fills  # type: ignore[attr-defined, no-any-return]

    poller, metrics = _poller(_Buggy(), _Sink(), time.time_ns())
    assert await poller.poll_once() is not None
    [record] = [r for r in caplog.records if r.name == "publisher.poll"]
    assert "adapter bug (counted as decode)" in record.getMessage() and record.exc_info is not None
    assert _decode_errors(metrics) == 1
    assert _failures(metrics, "adapter_bug") == 1 and record.kind == "adapter_bug"  # type: ignore[attr-defined]
