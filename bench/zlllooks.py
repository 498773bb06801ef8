"""What ZLL's looks at the far end of the list cost: requests a second added at 1,000 quiet sources.

`python -m bench.zlllooks [SOURCES] [PERIODS] [INTERVAL_S]` polls SOURCES quiet ZLL sources
(default 1,000: a quarter each sorted newest first, sorted oldest first, in insertion order oldest
first and newest first, the insertion-ordered ones with a history added in reverse, whose first
pages suggest the wrong order) for PERIODS look periods (`lookback_s / LOOK_SHARE`, default 3) of
virtual time, one poll every INTERVAL_S (default 10) each, through the real adapter over
:class:`httpx.MockTransport` (no I/O: request counts only). Every source holds 2,000 fills older
than its window, `page_limit` 200 and `lookback_s` 300 (the defaults). The same sources are polled
twice: as the adapter does, and with the periodic looks switched off (the look period set beyond
the run); the difference, after the first start's polls, is what the looks cost. Prints one JSON
line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import msgspec

from publisher.secret import Secret
from publisher.sim.zll import ZllSimulator
from publisher.venues import zll
from publisher.venues.http import RateLimiter, VenueClient

NS = 1_000_000_000
T0_NS = 1_796_156_674_000_000_000
HISTORY = 2000
LIMIT = 200
LOOKBACK_S = 300.0
KINDS = ("sorted-newest", "sorted-oldest", "insertion-oldest", "insertion-newest")


def _lists() -> dict[str, list[bytes]]:
    """Each kind's list as served, one encoded fill each: times T0 - 1 h - i s, all below the window."""
    sim = ZllSimulator(api_key="bench", seed=9)
    fills = [sim._new_fill(sim._rng, T0_NS - (3600 + i) * NS, T0_NS, {"subaccount_index": 0}).wire()
             for i in range(HISTORY)]  # newest first: the order a reversed history was added in
    by_time = fills[::-1]  # oldest first
    served = {
        "sorted-newest": fills,
        "sorted-oldest": by_time,
        "insertion-oldest": fills,  # added newest first, listed as added: falling times
        "insertion-newest": by_time,  # added newest first, listed last added first: rising times
    }
    return {kind: [msgspec.json.encode(item) for item in items] for kind, items in served.items()}


class _Lists:
    """Every source's list, by the subaccount its requests name; counts the requests."""

    def __init__(self, kinds: list[str]):
        self._fills = _lists()
        self._kinds = kinds
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        params = request.url.params
        items = self._fills[self._kinds[int(params["subaccount_index"])]]
        offset, limit = int(params["offset"]), int(params["limit"])
        return httpx.Response(200, content=b"[" + b",".join(items[offset : offset + limit]) + b"]")


async def _run(sources: int, periods: int, interval_s: float, looks: bool) -> dict[str, Any]:
    kinds = [KINDS[i % len(KINDS)] for i in range(sources)]
    lists = _Lists(kinds)
    client = VenueClient(httpx.MockTransport(lists), "https://zll.test", auth=zll.ZllAuth(Secret("bench")),
                         limiter=RateLimiter(1e9), describe_error=zll.describe_error)
    adapters = []
    for index in range(sources):
        source = zll.ZllSource(name=f"zll-{index}", base_url="https://zll.test", api_key_env="UNUSED",
                               subaccount_index=index, page_limit=LIMIT, lookback_s=LOOKBACK_S,
                               max_requests_per_s=1e5)
        adapter = zll.ZllAdapter(source, client)
        if not looks:
            adapter.look_every_ns = 1 << 62
        adapters.append(adapter)
    clock = [T0_NS]
    states: list[Any] = [None] * sources
    period_s = LOOKBACK_S / zll.LOOK_SHARE
    polls = int(periods * period_s / interval_s)
    warm = 3  # a first start and the poll after it (its first look) are not the steady state
    counted = 0
    for poll in range(warm + polls):
        if poll == warm:
            counted = lists.requests
        since = clock[0] - int(LOOKBACK_S * NS)
        for index, adapter in enumerate(adapters):
            result = await adapter.fetch(since, states[index], lambda: clock[0])
            states[index] = result.paging_state
        clock[0] += int(interval_s * NS)
    seconds = polls * interval_s
    return {"requests_per_s": (lists.requests - counted) / seconds, "seconds": seconds}


def main(argv: list[str]) -> int:
    sources = int(argv[0]) if argv else 1000
    periods = int(argv[1]) if len(argv) > 1 else 3
    interval_s = float(argv[2]) if len(argv) > 2 else 10.0
    with_looks = asyncio.run(_run(sources, periods, interval_s, looks=True))
    without = asyncio.run(_run(sources, periods, interval_s, looks=False))
    added = with_looks["requests_per_s"] - without["requests_per_s"]
    print(json.dumps({
        "sources": sources,
        "virtual_seconds": with_looks["seconds"],
        "poll_interval_s": interval_s,
        "look_period_s": LOOKBACK_S / zll.LOOK_SHARE,
        "requests_per_s_without_looks": round(without["requests_per_s"], 2),
        "requests_per_s_with_looks": round(with_looks["requests_per_s"], 2),
        "requests_per_s_added": round(added, 2),
        "requests_per_source_per_look_period": round(added / sources * LOOKBACK_S / zll.LOOK_SHARE, 3),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
