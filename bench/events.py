"""Realistic encoded fill events for the ceiling: the publisher's own normalisation of simulated fills."""

from __future__ import annotations

import time

import msgspec

from publisher.event import FillEvent, encode
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator
from publisher.venues import kalshi, zll


def make_fills(n: int, sources: int = 10) -> list[FillEvent]:
    """`n` events, half Kalshi (current shape) half ZLL, spread over `sources` source names."""
    _, public_pem = generate_key_pair()
    ksim = KalshiSimulator(public_key=public_pem, key_id="bench", shape="current", seed=7)
    zsim = ZllSimulator(api_key="bench", seed=8)
    now = time.time_ns()
    out: list[FillEvent] = []
    for i in range(n):
        source = f"src-{i % sources}"
        if i % 2 == 0:
            wire = msgspec.Raw(msgspec.json.encode(ksim._new_fill(ksim._rng, now + i, now, {}).wire()))
            event = kalshi.decode_fill(wire, source=source, observed_at_ns=now)
        else:
            wire = msgspec.Raw(msgspec.json.encode(zsim._new_fill(zsim._rng, now + i, now, {}).wire()))
            event = zll.decode_fill(wire, source=source, observed_at_ns=now)
        assert isinstance(event, FillEvent)
        out.append(event)
    return out


def mean_size(fills: list[FillEvent]) -> float:
    return sum(len(encode(f)) for f in fills) / max(1, len(fills))
