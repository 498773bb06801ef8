"""Switchable faults shared by the venue simulators.

A fault is armed either for the next `count` requests (:meth:`Faults.inject`) or for a fraction of
all requests (:meth:`Faults.set`). The simulator asks :meth:`Faults.take` at the point where a kind
applies, so a count is consumed only by a request the fault really hit (a `bad_fill` waits for a
page that has a fill to corrupt).

Kinds and their options:

- `http_500`: venue-format 500.
- `http_429`: venue-format 429; `retry_after` (seconds) adds a Retry-After header, absent by default
  because Kalshi sends none.
- `slow`: waits `delay_s` (default 30) before answering normally, so a client times out.
- `malformed_json`: 200 with a broken body; `mode` `truncated` (default), `garbled` or `html`.
- `drop_connection`: closes the socket without answering (orderly FIN).
- `reset`: closes the socket with a TCP RST.
- `auth`: venue-format 401 even with good credentials.
- `bad_fill`: one fill of the next non-empty page gets a bad field, the rest stay good; `mode`
  `non_numeric_price`, `missing_field` or `bad_enum` (default: drawn per fill); `sticky` (default
  true) keeps that fill bad in every later answer, as a venue-side data bug would.
- `schema_drift`: fills gain unknown fields and lose deprecated fields that have a replacement.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FaultKind = Literal[
    "http_500",
    "http_429",
    "slow",
    "malformed_json",
    "drop_connection",
    "reset",
    "auth",
    "bad_fill",
    "schema_drift",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(slots=True)
class Fault:
    """One armed fault: fires for the next `remaining` requests, or with `probability` each time."""

    kind: FaultKind
    remaining: int | None = None
    probability: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Faults:
    """The faults armed on one simulator; `fired` counts how often each kind fired."""

    def __init__(self, seed: int | None = None):
        self._armed: dict[str, Fault] = {}
        self._rng = random.Random(seed)
        self.fired: Counter[str] = Counter()

    def inject(self, kind: FaultKind, count: int = 1, **options: Any) -> None:
        """Fire `kind` on the next `count` requests it applies to."""
        _check_kind(kind)
        if count < 1:
            raise ValueError("count must be at least 1")
        self._armed[kind] = Fault(kind, remaining=count, options=options)

    def set(self, kind: FaultKind, probability: float, **options: Any) -> None:
        """Fire `kind` on each request it applies to with `probability` (0 disarms it)."""
        _check_kind(kind)
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if probability == 0.0:
            self._armed.pop(kind, None)
        else:
            self._armed[kind] = Fault(kind, probability=probability, options=options)

    def clear(self, kind: FaultKind | None = None) -> None:
        """Disarm one kind, or all of them."""
        if kind is None:
            self._armed.clear()
        else:
            self._armed.pop(kind, None)

    def armed(self) -> list[Fault]:
        """The faults currently armed (for the control surface's stats)."""
        return list(self._armed.values())

    def take(self, kind: FaultKind) -> Fault | None:
        """The armed fault of `kind` if it fires on this request (consuming one count), else None."""
        fault = self._armed.get(kind)
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self._armed[kind]
        elif fault.probability is not None and self._rng.random() >= fault.probability:
            return None
        self.fired[kind] += 1
        return fault

    def configure(self, spec: dict[str, Any]) -> None:
        """Arm a fault from the control surface's JSON `{kind, count | probability, ...options}`."""
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if not isinstance(kind, str):
            raise ValueError("'kind' is required")
        _check_kind(kind)
        count = spec.pop("count", None)
        probability = spec.pop("probability", None)
        if probability is not None:
            if count is not None:
                raise ValueError("give 'count' or 'probability', not both")
            if not isinstance(probability, int | float) or isinstance(probability, bool):
                raise ValueError("'probability' must be a number")
            self.set(kind, float(probability), **spec)  # type: ignore[arg-type]
            return
        if count is None:
            count = 1
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError("'count' must be an integer")
        self.inject(kind, count, **spec)  # type: ignore[arg-type]


def _check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")


def malform(body: bytes, mode: str = "truncated") -> bytes:
    """A 200 body that is not valid JSON any more."""
    if mode == "garbled":
        # flip a byte in the middle: structure breaks while the length stays plausible
        middle = len(body) // 2
        return body[:middle] + b"\x00}{\xff" + body[middle + 1 :]
    if mode == "html":
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    return body[: max(1, len(body) // 2)]
