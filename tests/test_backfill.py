"""`backfill_from` end to end: the publisher as a child process, the simulators over HTTP, a broker.

A first start publishes every fill executed since `backfill_from`, for Kalshi across its fills
cutoff (the part below it read from `GET /historical/fills`), for ZLL by paging back; nothing
older; each fill once. The audit over the backfilled span, which reads Kalshi's historical tier
too, finds nothing missing. A restart with a checkpoint ignores `backfill_from`, even moved
earlier.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.status import rfc3339
from tests.harness.delivery import fill_id_header
from tests.harness.stack import Stack
from tests.test_audit import audit

pytestmark = pytest.mark.integration

NS = 1_000_000_000
HOUR_NS = 3600 * NS
FAST = {"poll_interval_s": 0.3, "lookback_s": 30, "page_limit": 7, "max_requests_per_s": 200, "timeout_s": 5}


async def test_first_start_backfills_across_the_cutoff_and_a_restart_ignores_backfill_from(
        broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    now = time.time_ns()
    stack = Stack(tmp_path, broker.bootstrap_servers, topic_prefix)
    _, public_pem = generate_key_pair()
    kalshi = KalshiSimulator(public_key=public_pem, key_id="unused", fills_cutoff_ns=now - 2 * HOUR_NS, seed=11)
    await kalshi.start()
    try:
        backfill_from = rfc3339(now - 6 * HOUR_NS)
        await stack.kalshi("kalshi-bf", kalshi, backfill_from=backfill_from, **FAST)
        zll = await stack.zll("zll-bf", backfill_from=backfill_from, **FAST)
        too_old = [*kalshi.add_fills(3, executed_at_ns=now - 8 * HOUR_NS), *zll.add_fills(3, executed_at_ns=now - 8 * HOUR_NS)]
        wanted = [
            *kalshi.add_fills(9, executed_at_ns=now - 5 * HOUR_NS),  # below the cutoff: historical only
            *kalshi.add_fills(8, executed_at_ns=now - HOUR_NS),  # live, older than lookback_s
            *kalshi.add_fills(2, late_s=3),
            *zll.add_fills(9, executed_at_ns=now - 5 * HOUR_NS),
            *zll.add_fills(8, executed_at_ns=now - HOUR_NS),
            *zll.add_fills(2, late_s=3),
        ]
        publisher = stack.publisher().start()
        await publisher.wait_ready()
        records = await stack.wait_for_fills(f.fill_id for f in wanted)
        await asyncio.sleep(1.0)  # a few more polls: nothing else turns up
        published = Counter(fill_id_header(r) for r in await stack.records("kalshi", "zll"))
        assert set(published) == {f.fill_id for f in wanted} and set(published.values()) == {1}, published
        assert records and not {f.fill_id for f in too_old} & set(published)
        assert kalshi.served["historical_fills"] >= 2  # 9 fills at 7 a page: read where they are

        # the audit over the backfilled span reads the historical tier too, and finds it complete
        code, report = await audit(stack.write_config(), "--since", str(7 * 3600))
        by_source = {s["source"]: s for s in report["sources"]}
        assert code == 0, report
        for name in ("kalshi-bf", "zll-bf"):
            # the 17 older fills, and the 2 recent ones once they are past the settle margin
            assert by_source[name]["venue_fills"] == by_source[name]["published"] in (17, 19), report

        # a restart has checkpoints: backfill_from, moved earlier, changes nothing
        assert (await publisher.terminate())[0] == 0
        earlier = rfc3339(now - 10 * HOUR_NS)
        for spec in stack.sources:
            spec.settings["backfill_from"] = earlier
        fresh = [*kalshi.add_fills(2, late_s=1), *zll.add_fills(2, late_s=1)]
        publisher = stack.publisher().start()
        await publisher.wait_ready()
        await stack.wait_for_fills(f.fill_id for f in fresh)
        await asyncio.sleep(1.0)
        published = Counter(fill_id_header(r) for r in await stack.records("kalshi", "zll"))
        assert set(published) == {f.fill_id for f in wanted + fresh} and set(published.values()) == {1}
        assert (await publisher.terminate())[0] == 0
    finally:
        await stack.close()
