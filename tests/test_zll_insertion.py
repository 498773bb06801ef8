"""ZLL listing its fills in the order they arrived (`listing="insertion"`), not sorted by time.

ZLL documents no order. A venue that lists by insertion puts a late fill (an old `time`, visible
now) among the newest entries, so times do not fall or rise monotonically along the pages. The
publisher, as a child process against such simulators (newest first and oldest first), with late
fills arriving while it polls and while it is down, still publishes every fill of the window
exactly once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.harness.delivery import assert_exactly_once
from tests.harness.stack import Stack

pytestmark = pytest.mark.integration

NS = 1_000_000_000
LOOKBACK_S = 30
SETTINGS = {"poll_interval_s": 0.25, "lookback_s": LOOKBACK_S, "page_limit": 20, "max_requests_per_s": 200,
            "timeout_s": 5}


async def test_insertion_listing_loses_nothing_and_repeats_nothing(broker: Any, topic_prefix: str, tmp_path: Any) -> None:
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    try:
        sims = [await stack.zll(f"zll-{order}", order=order, listing="insertion", **SETTINGS)
                for order in ("newest", "oldest")]
        for sim in sims:
            for i in range(30):  # history inside the window, then late fills listed after it
                sim.add_fills(1, late_s=20 - i * 0.5)
            sim.add_fills(25, late_s=25)
        first_start_ns = time.time_ns()
        proc = stack.publisher().start()
        await proc.wait_ready()
        for sim in sims:
            sim.start_generator(30, late_fraction=0.4, late_max_s=10, burst_size=3)
        await asyncio.sleep(2.0)
        code, _ = await proc.terminate()
        assert code == 0, proc.log_tail()
        for sim in sims:  # while it is down: late fills listed after newer ones
            sim.add_fills(10)
            sim.add_fills(10, late_s=15)
        proc = stack.publisher().start()
        await proc.wait_ready()
        await asyncio.sleep(1.5)
        for sim in sims:
            await sim.stop_generator()
        expected = set(stack.expected(first_start_ns - LOOKBACK_S * NS))
        records = await stack.wait_for_fills(expected)
        code, _ = await proc.terminate()
        assert code == 0, proc.log_tail()
        report = assert_exactly_once(records, expected)
        assert report.expected > 150
    finally:
        await stack.close()
