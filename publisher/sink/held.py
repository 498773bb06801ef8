"""Sources held back: their batches hold a record Kafka refuses, so they commit apart from the rest.

A refused record (too large for the topic, a topic we may not write) fails its transaction on
every retry. Sharing a transaction, it would stall every source; held, only its own source waits:
its batches (and every later batch of it, which must commit after them) are retried alone after a
pause that doubles per failure, up to :data:`MAX_PAUSE_S`, until they commit. Nothing is dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publisher.sink.commit import SourceBatch

FIRST_PAUSE_S = 5.0
MAX_PAUSE_S = 300.0


@dataclass(slots=True)
class _Held:
    batches: list[SourceBatch]
    retry_at: float
    reason: str


@dataclass
class HeldSources:
    """Batches of held sources, each source's in order, and when to retry each source."""

    first_pause_s: float = FIRST_PAUSE_S
    max_pause_s: float = MAX_PAUSE_S
    _held: dict[str, _Held] = field(default_factory=dict)
    #: failures in a row of each source since its last commit
    _failures: dict[str, int] = field(default_factory=dict)

    def holds(self, source: str) -> bool:
        return source in self._held

    def add(self, batch: SourceBatch) -> None:
        """A newer batch of a held source: it waits behind the held ones."""
        self._held[batch.source].batches.append(batch)

    def hold(self, source: str, batches: list[SourceBatch], reason: str, now: float) -> float:
        """Hold `batches` (the oldest of `source`); returns the pause before they are retried."""
        failures = self._failures[source] = self._failures.get(source, 0) + 1
        pause = min(self.max_pause_s, self.first_pause_s * 2 ** min(failures - 1, 16))
        pause *= random.uniform(0.8, 1.0)  # many held sources do not retry in step
        held = self._held.get(source)
        later = held.batches if held is not None else []
        self._held[source] = _Held([*batches, *later], now + pause, reason)
        return pause

    def due(self, now: float) -> str | None:
        """A held source whose retry is due, if any."""
        return next((source for source, held in self._held.items() if held.retry_at <= now), None)

    def release(self, source: str) -> list[SourceBatch]:
        """Stop holding `source`; its batches, oldest first, to be retried now."""
        return self._held.pop(source).batches

    def next_retry_in(self, now: float) -> float | None:
        """Seconds until the next held source is due; None when none is held."""
        if not self._held:
            return None
        return max(0.0, min(held.retry_at for held in self._held.values()) - now)

    def committed(self, sources: set[str]) -> None:
        for source in sources:
            self._failures.pop(source, None)

    def describe(self) -> str | None:
        """Which sources are held and why (for the shutdown log); None when none is."""
        if not self._held:
            return None
        return "; ".join(f"source {source}: {held.reason}" for source, held in sorted(self._held.items()))
