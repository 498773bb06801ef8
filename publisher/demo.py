"""`fill-publisher demo`: the whole system on one machine, with no set-up at all.

Starts an embedded Kafka-protocol broker (librdkafka's mock cluster, child process), a simulated
Kalshi venue (RSA-PSS signature checks, mixed fill shapes, late fills) and a simulated ZLL venue
(API key, newest-first offset pages), runs the real publisher against them, and consumes the fills
topics with the typed consumer, printing each fill as it lands, the running net positions, and a
summary at the end. Midway it makes the venues misbehave once, so the retry and the dead-letter
queue can be seen: ZLL answers one request with a 500, and Kalshi shows one new fill whose price
is not a number, which lands on the DLQ topic (printed as it arrives) while the rest of its page is
published.

A few fills executed before the start (history inside the lookback window) are published by the
first poll; they are marked `history` and kept out of the lag figures. Colour only on a terminal
(and never with NO_COLOR set).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import statistics
import sys
import time
import uuid
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer

from publisher.app import Publisher
from publisher.config import Config, Settings, fills_topic, venue_of
from publisher.consumer import FillConsumer
from publisher.embedded_broker import EmbeddedBroker
from publisher.logs import configure_logging
from publisher.metrics import Metrics
from publisher.positions import PositionBook
from publisher.secret import Secret
from publisher.sim.kalshi import KalshiSimulator, generate_key_pair
from publisher.sim.zll import ZllSimulator

DEFAULT_HTTP_PORT = 9108
FILL_RATE_PER_S = 2.0
POSITIONS_EVERY_S = 5.0
#: when the venues misbehave (seconds after the first fills), earlier for short runs
FAULTS_AFTER_S = 5.0
HISTORY_FILLS = 3
HEADER = (f"  {'VENUE':6} {'SOURCE':12} {'INSTRUMENT':28} {'SIDE':4} {'QUANTITY':>8}   {'PRICE':<9} "
          f"{'FEE':<8} {'LAG':>10}")


class Style:
    """ANSI colour when stdout is a terminal (and NO_COLOR is unset); plain text otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @classmethod
    def for_stdout(cls) -> Style:
        return cls(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_settings(bootstrap: str, http_port: int, kalshi: KalshiSimulator, kalshi_key_id: str,
                  kalshi_private_pem: str, zll: ZllSimulator) -> Settings:
    """Settings for a publisher polling the two simulators through the embedded broker."""
    common = {"poll_interval_s": 1.0, "lookback_s": 60, "page_limit": 100, "max_requests_per_s": 20, "timeout_s": 5}
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "check_crcs": False,
                  "transactional_id_prefix": "fill-publisher-demo"},
        "http": {"host": "127.0.0.1", "port": http_port},
        "sources": [
            {"name": "kalshi-demo", "venue": "kalshi", "base_url": kalshi.url, "api_key_id": kalshi_key_id,
             "private_key_env": "DEMO_UNUSED", **common},
            {"name": "zll-demo", "venue": "zll", "base_url": zll.url, "api_key_env": "DEMO_UNUSED",
             "subaccount_index": 0, **common},
        ],
    }
    config = msgspec.convert(raw, Config)
    secrets = {"kalshi-demo": Secret(kalshi_private_pem), "zll-demo": Secret(zll.api_key)}
    return Settings(config=config, source_secrets=secrets, sasl_password=None)


def _fill_line(fill: Any, lag_s: float, history: bool) -> str:
    fee = fill.fee if fill.fee is not None else "-"
    lag = "history" if history else f"{lag_s * 1000:.0f} ms"
    return (f"  {fill.venue:6} {fill.source:12} {fill.instrument:28} {fill.side:4} {fill.quantity:>8} @ "
            f"{fill.price:<9} {fee:<8} {lag:>10}")


def _dead_letter_line(value: bytes) -> str:
    letter = msgspec.json.decode(value)
    raw = msgspec.json.encode(letter.get("raw")).decode()
    return (f"  DLQ    {letter.get('source', '?'):12} error: {letter.get('error')}\n"
            f"         raw (as the venue sent it): {raw[:150]}{'...' if len(raw) > 150 else ''}")


def _counter_total(metrics: Metrics, name: str, **labels: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def _run(duration: float | None, http_port: int | None) -> int:
    if http_port is None:
        http_port = DEFAULT_HTTP_PORT if _port_free(DEFAULT_HTTP_PORT) else 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    print("starting the embedded Kafka-protocol broker (librdkafka mock cluster)...", flush=True)
    broker = EmbeddedBroker().start()
    private_pem, public_pem = generate_key_pair()
    key_id = str(uuid.uuid4())
    kalshi = KalshiSimulator(public_key=public_pem, key_id=key_id, shape="mixed")
    zll = ZllSimulator(api_key=base64.b64encode(os.urandom(24)).decode(), order="newest")
    try:
        await kalshi.start()
        await zll.start()
        settings = demo_settings(broker.bootstrap_servers, http_port, kalshi, key_id, private_pem.decode(), zll)
        kafka = settings.config.kafka
        venues = list(dict.fromkeys(venue_of(source) for source in settings.config.sources))
        fills_topics = [fills_topic(kafka, venue) for venue in venues]
        for topic in (*fills_topics, kafka.dlq_topic):
            broker.create_topic(topic, partitions=kafka.topic_partitions)
        broker.create_topic(kafka.checkpoint_topic, partitions=1)
        # some history inside the lookback window, published by the first poll
        history = {f.fill_id for f in (*kalshi.add_fills(HISTORY_FILLS, late_s=20),
                                         *zll.add_fills(HISTORY_FILLS, late_s=20))}
        kalshi.start_generator(FILL_RATE_PER_S, late_fraction=0.15, late_max_s=10, burst_size=2)
        zll.start_generator(FILL_RATE_PER_S, late_fraction=0.15, late_max_s=10)

        publisher = Publisher(settings)
        service = asyncio.create_task(publisher.serve(stop), name="publisher")
        while not publisher.ready and not service.done():
            await asyncio.sleep(0.05)
        if service.done():
            return service.result()
        assert publisher.http is not None
        print(f"venues: kalshi {kalshi.url}  zll {zll.url}")
        print(f"kafka:  {broker.bootstrap_servers}  topics fills.kalshi fills.zll fills.dlq")
        print(f"metrics: {publisher.http.url}/metrics   health: {publisher.http.url}/healthz   "
              f"ready: {publisher.http.url}/readyz")
        print("fills as they are committed to Kafka" + ("" if duration else " (Ctrl-C to stop)")
              + "; LAG is execution at the venue to arrival here:", flush=True)
        style = Style.for_stdout()
        print(style.bold(HEADER), flush=True)

        book = PositionBook()
        lags: list[float] = []
        consumer = FillConsumer(broker.bootstrap_servers, fills_topics, check_crcs=False)
        dead_letters = AIOKafkaConsumer(kafka.dlq_topic, bootstrap_servers=broker.bootstrap_servers,
                                        isolation_level="read_committed", auto_offset_reset="earliest",
                                        check_crcs=False)
        started = time.monotonic()
        faults_after = FAULTS_AFTER_S if duration is None else min(FAULTS_AFTER_S, duration / 2)
        faults_done = False
        dlq_seen = 0
        next_table = started + POSITIONS_EVERY_S

        def show(batch: list[Any]) -> None:
            now_ns = time.time_ns()
            for fill in batch:
                book.apply(fill)
                lag = (now_ns - fill.executed_at_ns) / 1e9
                seeded = fill.fill_id in history
                if not seeded:
                    lags.append(lag)
                line = _fill_line(fill, lag, seeded)
                print(style.dim(line) if seeded else line, flush=True)

        async def show_dead_letters(timeout_ms: int = 0) -> int:
            fetched = await dead_letters.getmany(timeout_ms=timeout_ms)
            records = [r for rs in fetched.values() for r in rs if r.value is not None]
            for record in records:
                print(style.red(_dead_letter_line(record.value)), flush=True)
            return len(records)

        await dead_letters.start()
        try:
            async with consumer:
                async for batch in _until(consumer.batches(timeout_ms=200), stop, service):
                    show(batch)
                    dlq_seen += await show_dead_letters()
                    elapsed = time.monotonic() - started
                    if not faults_done and elapsed > faults_after:
                        faults_done = True
                        print(style.bold("  -- injecting one HTTP 500 on zll, and a new kalshi fill whose price is "
                                         "not a number (it goes to the DLQ) --"), flush=True)
                        zll.faults.inject("http_500")
                        kalshi.add_bad_fill("non_numeric_price")
                    if time.monotonic() >= next_table:
                        next_table += POSITIONS_EVERY_S
                        print("\nnet positions (YES contracts for Kalshi, base units for ZLL):")
                        print(book.table() + "\n")
                        print(style.bold(HEADER), flush=True)
                    if duration is not None and elapsed >= duration:
                        break
                stop.set()
                code = await service
                # what the publisher committed while shutting down
                async for batch in consumer.batches(timeout_ms=500):
                    if not batch:
                        break
                    show(batch)
                while (seen_now := await show_dead_letters(timeout_ms=500)) > 0:
                    dlq_seen += seen_now
        finally:
            await dead_letters.stop()
        metrics = publisher.metrics
        print("\nsummary (duplicates: fills re-read in the overlap window each poll, already published,"
              " so dropped)")
        for venue in venues:
            published = _counter_total(metrics, "fillpub_fills_published_total", venue=venue)
            duplicates = _counter_total(metrics, "fillpub_fills_duplicate_total", venue=venue)
            invalid = _counter_total(metrics, "fillpub_fills_invalid_total", venue=venue)
            errors = _counter_total(metrics, "fillpub_poll_errors_total", venue=venue)
            print(f"  {venue:6} published {published:5.0f}  duplicates dropped {duplicates:5.0f}  "
                  f"to DLQ {invalid:3.0f}  poll errors {errors:3.0f}")
        print(f"  dead letters read back from {kafka.dlq_topic}: {dlq_seen}")
        if lags:
            ordered = sorted(lags)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"  end-to-end lag (execution -> consumer): p50 {statistics.median(ordered) * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms over {len(ordered)} fills "
                  f"(the {len(history)} history fills left out; the simulators date some fills up to 10 s "
                  f"in the past on purpose, as venues show late fills)")
        print(f"  consumer saw {book.fills} fills; positions:\n{book.table()}")
        return code
    finally:
        stop.set()
        await kalshi.stop_generator()
        await zll.stop_generator()
        await kalshi.close()
        await zll.close()
        broker.stop()


async def _until(batches: Any, stop: asyncio.Event, service: asyncio.Task[int]) -> Any:
    """Batches from the consumer until stop is set or the publisher ends."""
    async for batch in batches:
        yield batch
        if stop.is_set() or service.done():
            return


def main(duration: float | None, http_port: int | None) -> int:
    """Entry point of `fill-publisher demo`; returns the exit status."""
    configure_logging(os.environ.get("FILLPUB_LOG_LEVEL", "WARNING"))
    logging.getLogger("publisher.app").setLevel(logging.INFO)
    try:
        return asyncio.run(_run(duration, http_port))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        with contextlib.suppress(Exception):
            logging.getLogger(__name__).debug("demo failed", exc_info=True)
        print(f"fill-publisher demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
