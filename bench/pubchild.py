"""The publisher under test, in a process of its own: `python -m bench.pubchild CONFIG STATS_OUT`.

Runs :class:`publisher.app.Publisher` exactly as `fill-publisher run` does, with measurement
wrapped around it from the outside (no product hooks):

- poll start delay: `Poller.poll_once` is wrapped; the delay is its actual start minus the time
  `Poller.run` made it due (`Poller.due`);
- pipeline share: `Poller._accept` runs synchronously right after the adapter's fetch returns and
  submits the batch; the wrapper stamps that moment and `TransactionalSink.submit` chains the
  batch's `on_commit`, so share = commit time - fetch done, per batch;
- with BENCH_LATENCY=1, each committed fill's (fill_id, committed_ns) for the end-to-end join;
- the commit timeline: (commit time, fills committed so far), for throughput measured the way the
  ceiling is (until the producer's commit, not until a consumer has read everything).

Stats are written as JSON to STATS_OUT on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from publisher import poll, sink
from publisher.app import Publisher
from publisher.config import load_settings
from publisher.logs import configure_logging

STATS: dict[str, Any] = {"delays": [], "share": [], "commits": {}, "starts": {}, "timeline": []}
_committed = [0]
_fetch_done: list[int | None] = [None]
_LATENCY = os.environ.get("BENCH_LATENCY") == "1"


def instrument() -> None:
    orig_poll_once = poll.Poller.poll_once
    orig_accept = poll.Poller._accept
    orig_submit = sink.TransactionalSink.submit

    async def poll_once(self: poll.Poller) -> float | None:
        start = time.monotonic()
        if self.due is not None:
            STATS["delays"].append((time.time(), start - self.due))
        STATS["starts"].setdefault(self.source.name, []).append(time.time())
        return await orig_poll_once(self)

    def _accept(self: poll.Poller, *args: Any, **kwargs: Any) -> None:
        _fetch_done[0] = time.time_ns()
        try:
            orig_accept(self, *args, **kwargs)
        finally:
            _fetch_done[0] = None

    def submit(self: sink.TransactionalSink, batch: sink.SourceBatch) -> None:
        fetch_done = _fetch_done[0]
        chained = batch.on_commit
        fills = batch.fills

        def on_commit(committed_ns: int) -> None:
            _committed[0] += len(fills)
            STATS["timeline"].append((committed_ns, _committed[0]))
            if fetch_done is not None:
                STATS["share"].append((time.time(), (committed_ns - fetch_done) / 1e6, len(fills)))
            if _LATENCY:
                commits = STATS["commits"]
                for fill in fills:
                    commits[fill.fill_id] = committed_ns
            chained(committed_ns)

        batch.on_commit = on_commit
        orig_submit(self, batch)

    poll.Poller.poll_once = poll_once  # type: ignore[method-assign]
    poll.Poller._accept = _accept  # type: ignore[method-assign]
    sink.TransactionalSink.submit = submit  # type: ignore[method-assign]


async def main(config: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await Publisher(load_settings(config)).serve(stop)


if __name__ == "__main__":
    configure_logging(os.environ.get("FILLPUB_LOG_LEVEL", "WARNING"))
    instrument()
    code = asyncio.run(main(sys.argv[1]))
    with open(sys.argv[2], "w") as handle:
        json.dump(STATS, handle)
    sys.exit(code)
