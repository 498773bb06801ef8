"""Bench-owned simulator process: several Kalshi/ZLL simulators in one child, away from the publisher.

`python -m bench.simserver SPEC_JSON` starts the simulators, seeds each one's backlog in ascending
time order (cheap inserts), pre-renders it (so the venue side does not slow the first poll), starts
background generators, prints one JSON line describing the URLs and credentials, and serves until
SIGTERM. Spec keys: `key_dir`, `kalshi` / `zll` (number of simulators), `subaccounts` (per
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


def credentials(key_dir: Path) -> dict[str, str]:
    """One Kalshi key pair and one ZLL API key shared by every simulator and source."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_key_pair()
    (key_dir / "kalshi.pem").write_bytes(private_pem)
    (key_dir / "kalshi.pub").write_bytes(public_pem)
    (key_dir / "zll.key").write_text(uuid.uuid4().hex + "\n")
    return {"kalshi_key_id": str(uuid.uuid4()), "kalshi_key_file": str(key_dir / "kalshi.pem"),
            "zll_key_file": str(key_dir / "zll.key")}


def seed_backlog(sim: Simulator[Any], field: str, n: int, span_s: float, subaccounts: int) -> None:
    now = time.time_ns()
    start = now - int(span_s * 1e9)
    step = int(span_s * 1e9) // max(n, 1)
    for i in range(n):
        sim.add_fills(1, executed_at_ns=start + i * step, **{field: i % subaccounts})
    sim._render_page(sim._store)  # noqa: SLF001 - warm the simulator's wire cache


async def main(spec: dict[str, Any]) -> None:
    creds = credentials(Path(spec["key_dir"]))
    public_pem = Path(spec["key_dir"], "kalshi.pub").read_bytes()
    api_key = Path(creds["zll_key_file"]).read_text().strip()
    subs = int(spec.get("subaccounts", 1))
    seed = int(spec.get("seed", 1))
    sims: dict[str, list[Simulator[Any]]] = {"kalshi": [], "zll": []}
    for i in range(int(spec.get("kalshi", 0))):
        sims["kalshi"].append(KalshiSimulator(public_key=public_pem, key_id=creds["kalshi_key_id"],
                                              shape=spec.get("shape", "current"), seed=seed + i))
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
