"""The typed consumer risk developers import, and the net-position example."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from publisher.consumer import FillConsumer, FillDecodeError
from publisher.event import FillEvent, encode
from publisher.positions import PositionBook


def fill(n: int, *, source: str = "kalshi-main", instrument: str = "KX-1", side: str = "buy",
         quantity: str = "1", fee: str | None = "0.01") -> FillEvent:
    return FillEvent(
        venue="kalshi", source=source, fill_id=f"f{n}", order_id=f"o{n}", instrument=instrument,
        side=side, price="0.5", quantity=quantity, fee=fee, fee_currency="USD", liquidity="taker",  # type: ignore[arg-type]
        executed_at_ns=1_700_000_000_000_000_000 + n, observed_at_ns=1_700_000_000_100_000_000 + n,
    )


def test_positions_are_signed_exact_sums_per_source_and_instrument() -> None:
    book = PositionBook()
    book.apply(fill(1, quantity="10.25"))
    book.apply(fill(2, side="sell", quantity="3.1", fee=None))
    book.apply(fill(3, instrument="KX-2", side="sell", quantity="2"))
    book.apply(fill(4, source="zll-main", instrument="KX-1", quantity="0.001"))
    assert book.positions[("kalshi-main", "KX-1")] == Decimal("7.15")
    assert book.positions[("kalshi-main", "KX-2")] == Decimal("-2")
    assert book.positions[("zll-main", "KX-1")] == Decimal("0.001")
    assert book.fees[("kalshi-main", "KX-1")] == Decimal("0.01")
    assert book.fills == 4
    assert "KX-2" in book.table() and "-2" in book.table()


@pytest.mark.integration
async def test_consumer_reads_committed_fills_decoded_into_the_event_type(broker: Any, topic_prefix: str) -> None:
    topic = f"{topic_prefix}fills.kalshi"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, transactional_id=f"{topic_prefix}tx",
                                enable_idempotence=True)
    await producer.start()
    try:
        async with producer.transaction():
            for n in range(5):
                await producer.send(topic, encode(fill(n)), key=b"kalshi-main:KX-1")
    finally:
        await producer.stop()
    got: list[FillEvent] = []
    async with FillConsumer(broker.bootstrap_servers, [topic], check_crcs=False) as consumer:
        async for batch in consumer.batches(timeout_ms=200):
            got.extend(batch)
            if len(got) >= 5:
                break
    assert got == [fill(n) for n in range(5)]
    assert all(isinstance(f, FillEvent) for f in got)


def test_undecodable_record_names_where_it_was() -> None:
    consumer = FillConsumer.__new__(FillConsumer)
    consumer._decoder = msgspec.json.Decoder(FillEvent)
    with pytest.raises(FillDecodeError, match=r"fills.kalshi\[0\]@7"):
        consumer.decode(b'{"schema_version": 1}', "fills.kalshi[0]@7")
