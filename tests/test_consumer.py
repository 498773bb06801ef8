"""The typed consumer risk developers import, and the net-position example."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
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


async def publish(broker: Any, topic_prefix: str, topic: str, fills: list[FillEvent]) -> None:
    """Commit `fills` to `topic` in one transaction, as the publisher would."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, transactional_id=f"{topic_prefix}tx",
                                enable_idempotence=True)
    await producer.start()
    try:
        async with producer.transaction():
            for event in fills:
                await producer.send(topic, encode(event), key=b"kalshi-main:KX-1")
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_consumer_reads_committed_fills_decoded_into_the_event_type(broker: Any, topic_prefix: str) -> None:
    topic = f"{topic_prefix}fills.kalshi"
    await publish(broker, topic_prefix, topic, [fill(n) for n in range(5)])
    got: list[FillEvent] = []
    async with FillConsumer(broker.bootstrap_servers, [topic], check_crcs=False) as consumer:
        async for batch in consumer.batches(timeout_ms=200):
            got.extend(batch)
            if len(got) >= 5:
                break
    assert got == [fill(n) for n in range(5)]
    assert all(isinstance(f, FillEvent) for f in got)


async def first_fills(broker: Any, topic: str, group: str, n: int) -> list[str]:
    """The first `n` fill ids a new consumer of `group` is given (the last one, left by `break`,
    is not done: it is not committed)."""
    got: list[str] = []
    async with FillConsumer(broker.bootstrap_servers, [topic], group_id=group, check_crcs=False) as consumer:
        async for fill_event in consumer:
            got.append(fill_event.fill_id)
            if len(got) == n:
                break
    return got


class Crash(Exception):
    """The consumer's own processing failed."""


@pytest.mark.integration
async def test_a_group_never_skips_the_fill_in_hand_when_the_consumer_dies(broker: Any, topic_prefix: str) -> None:
    """Offsets are committed for fills the caller is done with, never for the one it holds: the
    fill being processed when a consumer fails (or dies) is delivered again, none is skipped."""
    topic = f"{topic_prefix}fills.kalshi"
    await publish(broker, topic_prefix, topic, [fill(n) for n in range(8)])
    group = f"{topic_prefix}risk"
    # processing fails on the third fill: the first two are done and committed on the way out
    seen: list[str] = []
    with pytest.raises(Crash):
        async with FillConsumer(broker.bootstrap_servers, [topic], group_id=group, check_crcs=False) as consumer:
            async for fill_event in consumer:
                seen.append(fill_event.fill_id)
                if fill_event.fill_id == "f2":
                    raise Crash
    assert seen == ["f0", "f1", "f2"]

    # the next consumer starts at the failed fill; it dies without closing (no commit on the way
    # out): what the periodic commits covered stays read, the fill in hand comes again
    consumer = FillConsumer(broker.bootstrap_servers, [topic], group_id=group, check_crcs=False,
                            commit_interval_s=0)
    await consumer.__aenter__()
    held = []
    async for fill_event in consumer:
        held.append(fill_event.fill_id)
        if len(held) == 3:
            break
    await consumer._consumer.stop()  # the process is gone: nothing more is committed
    assert held == ["f2", "f3", "f4"]
    assert await first_fills(broker, topic, group, 4) == ["f4", "f5", "f6", "f7"]


def test_undecodable_record_names_where_it_was() -> None:
    consumer = FillConsumer.__new__(FillConsumer)
    consumer._decoder = msgspec.json.Decoder(FillEvent)
    with pytest.raises(FillDecodeError, match=r"fills.kalshi\[0\]@7"):
        consumer.decode(b'{"schema_version": 1}', "fills.kalshi[0]@7")


# --- python -m publisher.consumer with the publisher's Kafka settings ---------------------------


def consumer_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILLPUB_")}
    environ.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "publisher.consumer", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ)


@pytest.mark.parametrize(("args", "field"), [
    (["--bootstrap-servers", "k:9092", "--security-protocol", "SASL_SSL"], "kafka.sasl_mechanism"),
    (["--bootstrap-servers", "k:9092", "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
      "--sasl-username", "u", "--sasl-password-env", "NOPE_UNSET"], "kafka.sasl_password_env"),
    (["--bootstrap-servers", "k:9092", "--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"],
     "kafka.ssl_cafile"),
    ([], "kafka.bootstrap_servers"),
])
def test_consumer_cli_config_errors_exit_2_naming_the_setting(args: list[str], field: str) -> None:
    proc = consumer_cli(*args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert err.startswith(f"python -m publisher.consumer: config error: {field}: "), err
    assert "Traceback" not in err


async def test_from_settings_uses_the_publishers_client_settings(tmp_path: Path) -> None:
    from publisher.config import load_kafka_settings

    (tmp_path / "pw").write_text("sasl-Pa55-7\n")
    kafka, sasl, ssl_key = load_kafka_settings({
        "bootstrap_servers": "k:9092", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "risk", "sasl_password_file": str(tmp_path / "pw"), "client_id": "risk"}, {})
    assert sasl is not None and sasl.reveal() == "sasl-Pa55-7" and ssl_key is None
    consumer = FillConsumer.from_settings(kafka, ["fills.kalshi"], sasl_password=sasl)
    client = consumer._consumer._client  # aiokafka's client: where the settings must have arrived
    assert (client._security_protocol, client._sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("risk", "sasl-Pa55-7")
    assert client._client_id == "risk-consumer"


@pytest.mark.integration
async def test_consumer_cli_reads_with_a_publisher_config(broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{topic_prefix}fills.kalshi"
    await publish(broker, topic_prefix, topic, [fill(n, fee=None if n == 0 else "0.01") for n in range(3)])
    # a whole publisher config: the consumer uses its kafka: section and ignores the rest
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "check_crcs": False,
                  "transactional_id_prefix": "ignored", "max_pending_fills": 10},
        "sources": [{"name": "x", "venue": "zll"}]}))
    proc = consumer_cli("--config", str(config), "--topics", topic)
    try:
        assert proc.stdout is not None
        lines = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert [line.split()[-1] for line in lines] == ["f0", "f1", "f2"]
    assert " fee - id f0" in lines[0] and " fee 0.01 id f1" in lines[1]
