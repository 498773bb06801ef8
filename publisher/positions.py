"""Example consumer logic: net position per source and instrument, from the fill stream.

Kalshi fills are already in YES terms (`buy` adds YES contracts, `sell` removes them, the same
signed-count convention Kalshi uses for market positions), so one rule serves both venues:
position += quantity for a buy, -= quantity for a sell. Exact decimals throughout.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from publisher.event import FillEvent


class PositionBook:
    """Net position and fees paid per (source, instrument)."""

    def __init__(self) -> None:
        self.positions: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.fees: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.fills = 0

    def apply(self, fill: FillEvent) -> Decimal:
        """Book one fill; returns the new position of its (source, instrument)."""
        key = (fill.source, fill.instrument)
        quantity = Decimal(fill.quantity)
        self.positions[key] += quantity if fill.side == "buy" else -quantity
        if fill.fee is not None:
            self.fees[key] += Decimal(fill.fee)
        self.fills += 1
        return self.positions[key]

    def table(self) -> str:
        """The book as aligned text, one line per (source, instrument)."""
        lines = [f"{'source':18} {'instrument':28} {'position':>14} {'fees':>12}"]
        for (source, instrument), position in sorted(self.positions.items()):
            fee = self.fees.get((source, instrument), Decimal(0))
            lines.append(f"{source:18} {instrument:28} {position:>14} {fee:>12}")
        return "\n".join(lines)
