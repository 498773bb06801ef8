"""Bench-owned simulator process: several Kalshi/ZLL simulators in one child, away from the publisher.

`python -m bench.simserver SPEC_JSON` starts the simulators, seeds each one's backlog in ascending
time order (cheap inserts), pre-renders it (so the venue side does not slow the first poll), starts
background generators, prints one JSON line describing the URLs and credentials, and serves until
SIGTERM. Spec keys: `key_dir`, `kalshi` / `zll` (number of simulators), `kalshi_keys` (API keys), `subaccounts` (per
simulator), `backlog` (fills per simulator), `span_s` (backlog spread over the last span_s
seconds), `rate_per_s` (generator rate per simulator, 0: none), `seed`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from publisher.sim.base import Simulator
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator


def credentials(key_dir: Path, kalshi_keys: int = 1) -> dict[str, Any]:
    """Kalshi key pairs (as a firm has: one key serves up to 64 subaccounts) and one ZLL API key,
    shared by every simulator."""
    key_dir.mkdir(parents=True, exist_ok=True)
    ids, files = [], []
    for n in range(kalshi_keys):
        private_pem, public_pem = generate_key_pair()
        (key_dir / f"kalshi-{n}.pem").write_bytes(private_pem)
        (key_dir / f"kalshi-{n}.pub").write_bytes(public_pem)
        ids.append(str(uuid.uuid4()))
        files.append(str(key_dir / f"kalshi-{n}.pem"))
    (key_dir / "zll.key").write_text(uuid.uuid4().hex + "\n")
    return {"kalshi_key_ids": ids, "kalshi_key_files": files, "zll_key_file": str(key_dir / "zll.key")}


def seed_backlog(sim: Simulator[Any], field: str, n: int, span_s: float, subaccounts: int) -> None:
    now = time.time_ns()
    start = now - int(span_s * 1e9)
    step = int(span_s * 1e9) // max(n, 1)
    for i in range(n):
        sim.add_fills(1, executed_at_ns=start + i * step, **{field: i % subaccounts})
    sim._render_page(sim._store)


async def main(spec: dict[str, Any]) -> None:
    creds = credentials(Path(spec["key_dir"]), int(spec.get("kalshi_keys", 1)))
    public_pems = [Path(f).with_suffix(".pub").read_bytes() for f in creds["kalshi_key_files"]]
    api_key = Path(creds["zll_key_file"]).read_text().strip()
    subs = int(spec.get("subaccounts", 1))
    seed = int(spec.get("seed", 1))
    sims: dict[str, list[Simulator[Any]]] = {"kalshi": [], "zll": []}
    for i in range(int(spec.get("kalshi", 0))):
        sim = KalshiSimulator(public_key=public_pems[0], key_id=creds["kalshi_key_ids"][0],
                              shape=spec.get("shape", "current"), seed=seed + i)
        for key_id, public_pem in zip(creds["kalshi_key_ids"][1:], public_pems[1:], strict=True):
            sim.add_key(key_id, public_pem)
        sims["kalshi"].append(sim)
    for i in range(int(spec.get("zll", 0))):
        sims["zll"].append(ZllSimulator(api_key=api_key, subaccounts=range(subs), seed=seed + 1000 + i))
    for venue, group in sims.items():
        field = "subaccount" if venue == "kalshi" else "subaccount_index"
        for sim in group:
            await sim.start()
            seed_backlog(sim, field, int(spec.get("backlog", 0)), float(spec.get("span_s", 60)), subs)
    rate = float(spec.get("rate_per_s", 0))
    if rate > 0:
        for venue, group in sims.items():
            for sim in group:
                if venue == "kalshi":
                    sim.start_generator(rate, subaccounts=list(range(subs)))
                else:
                    sim.start_generator(rate)
    print(json.dumps({**creds, "kalshi": [s.url for s in sims["kalshi"]],
                      "kalshi_root": [s.root_url for s in sims["kalshi"]],
                      "zll": [s.url for s in sims["zll"]]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for group in sims.values():
        for sim in group:
            await sim.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
