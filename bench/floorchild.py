"""Size and cost of the memory below the floor: `python -m bench.floorchild` prints one JSON line.

A :class:`publisher.floor.BelowFloor` fed as the poll loop feeds it (the keys the dedupe window
forgets as its floor moves on, once a poll), measured with tracemalloc after each scenario:

- `busy`: a ZLL source, 100 fills/s, one poll a second, `page_limit` 200 (the default), 10 minutes;
- `busy_kalshi`: the same for a Kalshi source (its `below_floor_keep` is 0);
- `quiet`: a ZLL source, one fill every 10 s, the same settings, 3 hours (few keys, one second each);
- `outage`: 300 s of 100 fills/s forgotten by one advance (the poll after a long outage, or a
  lowered `lookback_s`), then the next poll's advance;

and for each the checkpoint's share (`BelowFloor.packed`, msgpack-encoded). Then the poll loop's
judgement of a page of fills below the floor, all published (ZLL's last page, newest first):
nanoseconds per fill, best of 5 runs of `timeit`.
"""

from __future__ import annotations

import json
import timeit
import tracemalloc
import uuid
from typing import Any

import msgspec

from publisher.dedupe import fill_key
from publisher.event import FillEvent, VenueFields
from publisher.floor import KEEP_PAGES, BelowFloor

NS = 1_000_000_000
START_S = 1_800_000_000
PAGE_LIMIT = 200


def _key(n: int) -> bytes:
    return fill_key(str(uuid.UUID(int=(n * 0x9E3779B97F4A7C15 + 12345) % (1 << 128), version=4)))


def _feed(memory: BelowFloor, per_second: float, seconds: int) -> tuple[list[int], list[bytes]]:
    """Forget `per_second` fills a second (one advance a second) for `seconds`; the second and the
    key of the last page of them (no pair objects: tuples freed go to a free list tracemalloc counts)."""
    last_seconds: list[int] = []
    last_keys: list[bytes] = []
    made = 0
    owed = 0.0
    for second in range(START_S, START_S + seconds):
        owed += per_second
        count = int(owed)
        owed -= count
        keys = [_key(made + i) for i in range(count)]
        made += count
        if keys:
            memory.forget({second: keys})
            last_seconds = (last_seconds + [second] * count)[-PAGE_LIMIT:]
            last_keys = (last_keys + keys)[-PAGE_LIMIT:]
    return last_seconds, last_keys


def _measure(per_second: float, seconds: int, burst: int = 0, keep: int = KEEP_PAGES * PAGE_LIMIT) -> dict[str, Any]:
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    memory = BelowFloor(START_S, keep)
    if burst:
        memory.forget({START_S + second: [_key(second * 100 + i) for i in range(100)] for second in range(burst)})
        peak_keys = len(memory)
        peak_bytes = tracemalloc.get_traced_memory()[0] - base
        memory.forget({START_S + burst: [_key(10**9)]})
    else:
        _feed(memory, per_second, seconds)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    covered, carried = memory.packed()
    result = {"keys": len(memory), "bytes": held, "bytes_per_key": round(held / max(1, len(memory)), 1),
              "covers_s": START_S + seconds + burst - covered,
              "checkpoint_bytes": len(msgspec.msgpack.encode(carried))}
    if burst:
        result["peak_keys"] = peak_keys
        result["peak_bytes_per_key"] = round(peak_bytes / peak_keys, 1)
    return result


def _judge_ns() -> float:
    """ns per fill to judge a page of published fills below the floor (ZLL's last page)."""
    memory = BelowFloor(START_S, KEEP_PAGES * PAGE_LIMIT)
    seconds, keys = _feed(memory, 100, 600)
    fills = [FillEvent(venue="zll", source="s", fill_id=str(i), order_id="o", instrument="BTC-PERP", side="buy",
                       price="1", quantity="1", fee="0", fee_currency="USDC", liquidity="taker",
                       executed_at_ns=second * NS + 1, observed_at_ns=0, venue_fields=VenueFields())
             for i, second in enumerate(seconds)]
    assert memory.judge(fills, keys) == []
    runs = timeit.repeat(lambda: memory.judge(fills, keys), number=2000, repeat=5)
    return min(runs) / 2000 / len(fills) * 1e9


def main() -> dict[str, Any]:
    return {"busy": _measure(100, 600), "busy_kalshi": _measure(100, 600, keep=0), "quiet": _measure(0.1, 3 * 3600),
            "outage": _measure(100, 0, burst=300),
            "judge_ns_per_fill": round(_judge_ns(), 1)}


if __name__ == "__main__":
    print(json.dumps(main()))
