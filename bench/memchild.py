"""Dedupe state size: `python -m bench.memchild N WINDOW_S` prints a JSON line.

Builds one :class:`publisher.dedupe.SeenWindow` holding N realistic fill ids (random UUID strings,
executed evenly over WINDOW_S seconds), measured with tracemalloc (bytes per remembered fill) and
as the process RSS growth; then the cost of the checkpoint that carries it (size, encode time).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc
import uuid

from publisher.checkpoint import Checkpoint, encode_checkpoint
from publisher.dedupe import SeenWindow, fill_key


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(n: int, window_s: float) -> dict[str, float]:
    start_ns = time.time_ns() - int(window_s * 1e9)
    step = int(window_s * 1e9) // n
    ids = [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 12345) % (1 << 128), version=4)) for i in range(n)]
    # RSS first, without tracemalloc (whose own bookkeeping would inflate it)
    rss0 = rss_kib()
    window = SeenWindow(start_ns)
    for i, fill_id in enumerate(ids):
        window.admit(fill_key(fill_id), start_ns + i * step)
    rss1 = rss_kib()
    del window
    tracemalloc.start()
    window = SeenWindow(start_ns)
    for i, fill_id in enumerate(ids):
        window.admit(fill_key(fill_id), start_ns + i * step)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t = time.perf_counter()
    packed = window.packed()
    record = encode_checkpoint(Checkpoint(source="s", venue="kalshi", watermark_ns=start_ns, floor_ns=start_ns,
                                          seen=packed))
    encode_ms = (time.perf_counter() - t) * 1e3
    return {"n": n, "bytes_per_fill": traced / n, "rss_growth_per_fill": (rss1 - rss0) * 1024 / n,
            "checkpoint_bytes": len(record), "checkpoint_encode_ms": encode_ms,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), float(sys.argv[2]))))
