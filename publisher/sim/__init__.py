"""Venue simulators: real HTTP servers speaking Kalshi's and ZLL's fills APIs, with faults.

They power `fill-publisher demo`, the integration tests and the benchmarks. Each keeps the ground
truth as canonical fills whose :meth:`~publisher.sim.base.SimFill.expected_event` gives the event
the publisher must produce, so a test compares Kafka's content with the truth exactly. Run one
standalone with `python -m publisher.sim kalshi|zll ...`.
"""

from publisher.sim.base import SimFill, Simulator
from publisher.sim.faults import FAULT_KINDS, FaultKind, Faults
from publisher.sim.kalshi import KalshiFill, KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllFill, ZllSimulator

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "Faults",
    "KalshiFill",
    "KalshiSimulator",
    "SimFill",
    "Simulator",
    "ZllFill",
    "ZllSimulator",
    "generate_key_pair",
]
