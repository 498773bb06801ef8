"""Read fills back from Kafka, typed: the module risk developers import.

```python
async with FillConsumer("kafka:9092", ["fills.kalshi", "fills.zll"], group_id="risk") as fills:
    async for fill in fills:            # fill: publisher.event.FillEvent
        book.apply(fill)
```

Consumers read with `isolation_level="read_committed"`, so records of aborted or unfinished
transactions are never delivered (on real Kafka; see the README on the test broker) and every fill
arrives exactly once per consumer group. Values decode straight into :class:`FillEvent` with
msgspec; prices, sizes and fees stay decimal strings (`decimal.Decimal(fill.price)` to compute).

Run `python -m publisher.consumer --bootstrap-servers HOST:PORT` to print fills as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer

from publisher.event import FillEvent


class FillDecodeError(ValueError):
    """A record on a fills topic is not a schema_version 1 fill event."""


class FillConsumer:
    """An async iterator of :class:`FillEvent` over one or more fills topics.

    `group_id=None` reads without committing offsets (each start replays from `auto_offset_reset`);
    with a group, offsets are committed automatically as aiokafka does. Extra keyword arguments go
    to :class:`aiokafka.AIOKafkaConsumer` (security settings; `check_crcs=False` for the test broker).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "earliest",
        **options: Any,
    ):
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            isolation_level="read_committed",
            **options,
        )
        self._decoder = msgspec.json.Decoder(FillEvent)

    async def __aenter__(self) -> FillConsumer:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    def decode(self, value: bytes | None, where: str = "") -> FillEvent:
        """Decode one record value; :class:`FillDecodeError` names the record when it fails."""
        try:
            if value is None:
                raise msgspec.DecodeError("empty record")
            return self._decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FillDecodeError(f"{where}: {exc}") from None

    async def batches(self, timeout_ms: int = 500) -> AsyncIterator[list[FillEvent]]:
        """Fills in the batches Kafka delivers them (cheaper than one at a time)."""
        while True:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms)
            out = [
                self.decode(record.value, f"{tp.topic}[{tp.partition}]@{record.offset}")
                for tp, records in fetched.items()
                for record in records
            ]
            yield out

    def __aiter__(self) -> AsyncIterator[FillEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[FillEvent]:
        async for record in self._consumer:
            yield self.decode(record.value, f"{record.topic}[{record.partition}]@{record.offset}")


async def _print_fills(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    topics = [t for t in args.topics.split(",") if t]
    async with FillConsumer(args.bootstrap_servers, topics, group_id=args.group_id,
                            check_crcs=not args.no_check_crcs) as consumer:
        async def consume() -> None:
            async for fill in consumer:
                print(f"{fill.venue:6} {fill.source:16} {fill.instrument:24} {fill.side:4} "
                      f"{fill.quantity:>12} @ {fill.price:<10} fee {fill.fee} id {fill.fill_id}", flush=True)

        task = asyncio.create_task(consume())
        await asyncio.wait({task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m publisher.consumer", description="Print fills from Kafka.")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topics", default="fills.kalshi,fills.zll")
    parser.add_argument("--group-id", default=None)
    parser.add_argument("--no-check-crcs", action="store_true",
                        help="needed only against librdkafka's mock broker (test/demo)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_print_fills(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
