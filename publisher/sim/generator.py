"""Drawing fill values and pacing background generation, shared by the venue simulators.

Everything random comes from one :class:`random.Random` per simulator, so a seeded simulator
produces the same ids and values on every run (timestamps still follow the wall clock).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

log = logging.getLogger(__name__)


def to_decimal(value: Any, name: str) -> Decimal:
    """A money/size override as a Decimal; floats are refused (money is never a float here)."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | str) and not isinstance(value, bool):
        try:
            result = Decimal(value)
        except ArithmeticError:
            raise ValueError(f"{name} is not a decimal number: {value!r}") from None
    else:
        raise ValueError(f"{name} must be a Decimal, int or decimal string, not {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{name} must be finite")
    return result


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng`, so a seeded simulator produces the same ids every run."""
    value = rng.getrandbits(128)
    value = (value & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def pick(
    rng: random.Random, fields: dict[str, Any], name: str, default: Iterable[Any], *, choices: str | None = None
) -> Any:
    """`fields[name]` when given, else a random choice from `fields[choices]` or `default`."""
    if name in fields:
        return fields[name]
    return rng.choice(list((fields.get(choices) if choices else None) or default))


async def run_generator(
    add_group: Callable[[float | None], None],
    rng: random.Random,
    groups_per_s: float,
    late_fraction: float,
    late_max_s: float,
) -> None:
    """Call `add_group(late_s)` `groups_per_s` times a second until cancelled.

    `late_s` is None for a fill executed now, or for a `late_fraction` of the groups a delay up to
    `late_max_s` seconds into the past.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    emitted = 0
    while True:
        # catch up on every group due by now, so a stalled event loop keeps the average rate
        due = int((loop.time() - start) * groups_per_s) - emitted
        for _ in range(due):
            late_s = rng.uniform(0.0, late_max_s) if rng.random() < late_fraction else None
            try:
                add_group(late_s)
            except ValueError:
                log.exception("simulator generator cannot create fills; stopping it")
                return
        emitted += max(due, 0)
        await asyncio.sleep(max(0.001, (emitted + 1) / groups_per_s - (loop.time() - start)))
