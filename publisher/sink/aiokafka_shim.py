"""The one place the sink leans on aiokafka internals: tearing down a wedged producer.

`AIOKafkaProducer.stop()` flushes first, which never ends for an idempotent producer whose broker
is gone (its batches never expire), and aiokafka has no public way to cancel its sender task. So a
producer that does not stop in time is torn down here: the accumulator's batches failed (which
releases the flush), the sender task cancelled, the connections closed. Every internal is looked
up defensively; `tests/test_sink_shim.py` fails loudly when an aiokafka release renames one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.errors import KafkaError


def internals(producer: Any) -> tuple[Any, Any]:
    """The producer's sender task and message accumulator (None where aiokafka lacks them)."""
    sender = getattr(producer, "_sender", None)
    return getattr(sender, "sender_task", None), getattr(producer, "_message_accumulator", None)


async def tear_down(producer: Any) -> None:
    """Fail what the producer holds, cancel its sender task, close its connections."""
    task, accumulator = internals(producer)
    with contextlib.suppress(Exception):
        if accumulator is not None:
            accumulator.fail_all(KafkaError("producer discarded"))
    if task is not None and not task.done():
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), 1.0)
    if task is not None and not task.done():
        await asyncio.wait({task}, timeout=1.0)
