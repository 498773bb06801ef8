"""Hostile venues against `fill-publisher run` in a child process, over real HTTP on 127.0.0.1.

One Kalshi source polls a :class:`~tests.harness.hostile.HostileVenue` that goes through every
hostile mode in turn (endless headers, an endless body, 200 MB, a gzip bomb, a drip, JSON nested 100,000 deep,
corrupt gzip, a redirect, `Retry-After: 1e12`), answering normally in between; two more sources
(Kalshi and ZLL) poll venues that answer 401 with our own request headers echoed into the error
message, the credential placed across the cut of the logged text. Meanwhile a healthy Kalshi and a
healthy ZLL source poll simulators that keep adding fills.

Shown: each hostile case fails the poll quickly with the right reason and a log line saying what
happened; the publisher's RSS stays flat (sampled every 0.1 s); `/healthz` answers within a second
throughout; the healthy sources publish every fill exactly once; no part of any credential the
venues received reaches the log; SIGTERM still ends the process within the contract's 10 s.

:func:`run_cases` returns what it measured per case (RSS before/peak/after, time to the error,
the slowest /healthz), so the same scenario can be measured against other code.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.delivery import assert_exactly_once
from tests.harness.hostile import HostileVenue, Mode
from tests.harness.stack import NS, PublisherProcess, Stack, secret_needles, wait_until

pytestmark = pytest.mark.integration

LOOKBACK_S = 30
HEALTHY = {"poll_interval_s": 0.2, "lookback_s": LOOKBACK_S, "page_limit": 50, "max_requests_per_s": 100,
           "timeout_s": 5}
HOSTILE = {**HEALTHY, "timeout_s": 1.0}

#: (mode, the reason its poll error is counted as, what the log line says)
CASES: list[tuple[Mode, str, str]] = [
    ("endless_headers", "connect", "RemoteProtocolError"),
    ("endless_chunked", "decode", "answer too large"),
    ("huge_body", "decode", "answer too large"),
    ("gzip_bomb", "decode", "answer too large"),
    ("drip", "timeout", "no whole answer within timeout_s"),
    ("deep_json", "decode", "nested too deeply"),
    ("corrupt_gzip", "decode", "corrupt gzip body"),
    ("redirect", "decode", "HTTP 301"),
    # last: the source then waits the capped 300 s
    ("retry_after_forever", "http_5xx", "capped at 300s"),
]


@dataclass
class CaseResult:
    mode: str
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    #: from the switch to the first counted error; None: none within the limit
    time_to_error_s: float | None
    healthz_worst_s: float


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """Samples the child's RSS and times `GET /healthz` every 0.1 s, in the background."""

    def __init__(self, proc: PublisherProcess):
        self.proc = proc
        self.rss_peak = 0.0
        self.healthz_worst = 0.0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.rss_peak = self.rss()
        self.healthz_worst = 0.0

    def rss(self) -> float:
        assert self.proc.proc is not None
        return rss_mib(self.proc.proc.pid)

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                self.rss_peak = max(self.rss_peak, self.rss())
                started = time.monotonic()
                try:
                    ok = (await client.get(self.proc.url + "/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.healthz_worst = max(self.healthz_worst, time.monotonic() - started)
                self.failures += not ok
                await asyncio.sleep(0.1)


async def run_cases(proc: PublisherProcess, venue: HostileVenue, source: str, watch: Watch,
                    cases: list[tuple[Mode, str, str]], limit_s: float = 30.0) -> list[CaseResult]:
    """Switch `venue` through `cases`, each after a successful poll of `source` (so each starts
    from a reset backoff); what each case did to the publisher."""
    results = []
    for mode, reason, _ in cases:
        venue.mode = "ok"
        mark = await proc.metric("fillpub_last_success_timestamp_seconds", source=source)

        async def polled_ok(mark: float = mark) -> bool:
            return await proc.metric("fillpub_last_success_timestamp_seconds", source=source) > mark

        await wait_until(polled_ok, f"a successful poll of {source} before {mode}", timeout_s=limit_s,
                         context=proc.log_tail)
        before = await proc.metric("fillpub_poll_errors_total", source=source, reason=reason)
        watch.reset()
        rss_before = watch.rss()
        started = time.monotonic()
        venue.mode = mode
        took: float | None = None
        while time.monotonic() - started < limit_s:
            if await proc.metric("fillpub_poll_errors_total", source=source, reason=reason) > before:
                took = time.monotonic() - started
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # let a just-failed poll release what it held
        results.append(CaseResult(mode, rss_before, watch.rss_peak, watch.rss(), took, watch.healthz_worst))
    return results


async def test_hostile_venues_are_contained_and_healthy_sources_publish_everything(
        broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    async with HostileVenue() as hostile, HostileVenue("echo_401") as echo_k, HostileVenue("echo_401") as echo_z:
        try:
            healthy = [await stack.kalshi("kalshi-ok", **HEALTHY), await stack.zll("zll-ok", **HEALTHY)]
            await stack.kalshi("kalshi-hostile", **HOSTILE, base_url=hostile.url)
            await stack.kalshi("kalshi-echo", **HOSTILE, base_url=echo_k.url)
            await stack.zll("zll-echo", **HOSTILE, base_url=echo_z.url)
            for name, topic in stack.topics.items():
                broker.create_topic(topic, partitions=1 if name == "checkpoint" else 4)
            hostile.bomb  # noqa: B018 - built before the clock starts
            start_ns = time.time_ns()
            proc = stack.publisher().start()
            await proc.wait_ready()
            for sim in healthy:
                sim.start_generator(10)
            async with Watch(proc) as watch:
                rss_start = watch.rss()
                published = await proc.metric("fillpub_fills_published_total", source="zll-ok")
                results = await run_cases(proc, hostile, "kalshi-hostile", watch, CASES)
                still_publishing = await proc.metric("fillpub_fills_published_total", source="zll-ok") > published
                for sim in healthy:
                    await sim.stop_generator()
                expected = {fid for fid, (spec, _) in stack.expected(start_ns - LOOKBACK_S * NS).items()
                            if spec.name in ("kalshi-ok", "zll-ok")}
                records = await stack.wait_for_fills(expected)
                healthz_failures, healthz_worst_run = watch.failures, watch.healthz_worst
            auth_errors = {s: await proc.metric("fillpub_poll_errors_total", source=s, reason="auth")
                           for s in ("kalshi-echo", "zll-echo")}
            code, took = await proc.terminate()
        finally:
            await stack.close()

    for result in results:
        print(result)  # the measurements, for the report (pytest -s)
    logs = proc.logs()
    assert code == 0 and took < 10, (code, took, proc.log_tail())
    for (mode, reason, needle), result in zip(CASES, results, strict=True):
        assert result.time_to_error_s is not None, f"{mode}: no {reason} error"
        bound = HOSTILE["timeout_s"] + 3 if mode == "drip" else 5.0
        assert result.time_to_error_s < bound, result
        assert result.rss_peak_mib - rss_start < 100, result
        assert result.healthz_worst_s < 1.0, result
        assert proc.log_lines("source kalshi-hostile: poll failed", reason, needle), (mode, proc.log_tail())
    assert healthz_failures == 0 and healthz_worst_run < 1.0
    assert "retrying in 300.0s" in proc.log_lines("capped at 300s")[0]
    assert "Traceback" not in logs and "adapter bug" not in logs
    assert still_publishing
    assert_exactly_once(records, expected)

    # credentials echoed by the venues: no piece of them in the log
    assert all(count >= 1 for count in auth_errors.values()), auth_errors
    received = echo_k.credentials + echo_z.credentials
    assert received and all(len(c) >= 24 for c in received)
    for credential in received:
        for start in range(0, len(credential) - 12):
            assert credential[start:start + 12] not in logs, "a piece of a request credential is in the log"
    for needle in secret_needles(stack.secrets()):
        assert needle not in logs
    for name in ("kalshi-echo", "zll-echo"):
        lines = proc.log_lines(f"source {name}: venue rejected our credentials", "HTTP 401")
        assert lines and "***" in lines[0], proc.log_tail()
