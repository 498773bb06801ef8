"""Read fills back from Kafka, typed: the module risk developers import.

```python
async with FillConsumer("kafka:9092", ["fills.kalshi", "fills.zll"], group_id="risk") as fills:
    async for fill in fills:            # fill: publisher.event.FillEvent
        book.apply(fill)
```

Consumers read with `isolation_level="read_committed"`, so records of aborted or unfinished
transactions are never delivered (on real Kafka; docs/delivery-guarantees.md says what the test
broker shows): the fills topics hold each fill exactly once. Values decode straight into
:class:`FillEvent` with msgspec; prices, sizes and fees stay decimal strings
(`decimal.Decimal(fill.price)` to compute).

With a `group_id`, a fill's offset is committed only once the caller is done with it (it asked
for the next fill, or the next batch), never when it is merely handed out: a consumer that dies
mid-fill gets that fill again on restart and never skips one. Delivery to a consumer group is
therefore at least once: a restart (or a rebalance) can deliver again the fills processed since
the last commit. Exactly-once effects need the consumer's own bookkeeping: apply each
`fill_id` once (it is unique per venue), or store the offsets with the consumer's state.

Run `python -m publisher.consumer --bootstrap-servers HOST:PORT` to print fills as they arrive;
it takes the publisher's Kafka settings (`--config` reads the `kafka:` section of a publisher
config; `--security-protocol`, `--sasl-*`, `--ssl-*` give them one by one), so it works against a
production cluster. :meth:`FillConsumer.from_settings` does the same from code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
import yaml
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from publisher.config import ConfigError, KafkaConfig, load_kafka_settings
from publisher.event import FillEvent
from publisher.kafkaclient import consumer_options
from publisher.secret import Secret

log = logging.getLogger(__name__)

#: how often the offsets of finished fills are committed (and always when the consumer closes)
COMMIT_INTERVAL_S = 1.0


class FillDecodeError(ValueError):
    """A record on a fills topic is not a schema_version 1 fill event."""


class FillConsumer:
    """An async iterator of :class:`FillEvent` over one or more fills topics.

    `group_id=None` reads without committing offsets (each start replays from `auto_offset_reset`).
    With a group, the offsets of the fills the caller is done with are committed every
    `commit_interval_s` and when the consumer is closed (see the module docstring: at least
    once, never a skipped fill). Extra keyword arguments go to :class:`aiokafka.AIOKafkaConsumer`
    (security settings; `check_crcs=False` for the test broker).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "earliest",
        commit_interval_s: float = COMMIT_INTERVAL_S,
        **options: Any,
    ):
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            isolation_level="read_committed",
            # aiokafka's auto-commit commits what it has handed out, processed or not: a crash
            # between the two would skip fills. Offsets are committed here, of finished fills.
            enable_auto_commit=False,
            **options,
        )
        self._decoder = msgspec.json.Decoder(FillEvent)
        self._commits = group_id is not None
        self._commit_interval_s = commit_interval_s
        #: per partition, the offset after the last fill the caller is done with, not yet committed
        self._done: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()

    @classmethod
    def from_settings(cls, kafka: KafkaConfig, topics: list[str], *, sasl_password: Secret | None = None,
                      ssl_key_password: Secret | None = None, group_id: str | None = None,
                      auto_offset_reset: str = "earliest") -> FillConsumer:
        """A consumer with the publisher's own Kafka client settings (TLS, SASL, CRC checks)."""
        options = consumer_options(kafka, sasl_password, ssl_key_password)
        options["client_id"] = f"{kafka.client_id}-consumer"
        return cls(options.pop("bootstrap_servers"), topics, group_id=group_id,
                   auto_offset_reset=auto_offset_reset, **options)

    async def __aenter__(self) -> FillConsumer:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.commit()
        finally:
            await self._consumer.stop()

    async def commit(self) -> None:
        """Commit the offsets of the fills the caller is done with (with a group; else nothing).

        Offsets of partitions this consumer no longer owns (a rebalance took them) are dropped:
        their new owner reads those fills again, which is the at-least-once promise.
        """
        done, self._done = self._done, {}
        self._last_commit = time.monotonic()
        if not self._commits or not done:
            return
        owned = self._consumer.assignment()
        offsets = {tp: offset for tp, offset in done.items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance under way: read again
            log.warning("offsets not committed (%s); the fills since the last commit will be read again", exc)

    async def _finished(self, records: Iterable[ConsumerRecord[Any, Any]]) -> None:
        """The caller is done with `records`: commit them in due course."""
        if not self._commits:
            return
        for record in records:
            self._done[TopicPartition(record.topic, record.partition)] = record.offset + 1
        if time.monotonic() - self._last_commit >= self._commit_interval_s:
            await self.commit()

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
            records = [record for batch in fetched.values() for record in batch]
            yield [self.decode(record.value, f"{record.topic}[{record.partition}]@{record.offset}")
                   for record in records]
            await self._finished(records)  # the caller asked for the next batch: done with this one

    def __aiter__(self) -> AsyncIterator[FillEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[FillEvent]:
        async for record in self._consumer:
            yield self.decode(record.value, f"{record.topic}[{record.partition}]@{record.offset}")
            await self._finished((record,))  # the caller asked for the next fill: done with this one


#: command-line options that set a `kafka:` setting of the same name
_KAFKA_FLAGS = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file",
                "sasl_password_env", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_file",
                "ssl_key_password_env", "client_id")


def _kafka_section(args: argparse.Namespace) -> dict[str, Any]:
    """The `kafka:` section of `--config` (if given), overridden by the flags given."""
    raw: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                document = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError("config", f"cannot read {args.config!r} ({type(exc).__name__})") from None
        section = document.get("kafka") if isinstance(document, dict) else None
        if not isinstance(section, dict):
            raise ConfigError("config", f"{args.config!r} has no kafka: section")
        # publisher-only settings the consumer does not use, so a full publisher config works as is
        raw = {k: v for k, v in section.items() if k in KafkaConfig.__struct_fields__}
    raw.update({flag: getattr(args, flag) for flag in _KAFKA_FLAGS if getattr(args, flag) is not None})
    if args.no_check_crcs:
        raw["check_crcs"] = False
    return raw


async def _print_fills(kafka: KafkaConfig, topics: list[str], sasl_password: Secret | None,
                       ssl_key_password: Secret | None, group_id: str | None) -> None:
    consumer = FillConsumer.from_settings(kafka, topics, sasl_password=sasl_password,
                                          ssl_key_password=ssl_key_password, group_id=group_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with consumer:
        async def consume() -> None:
            async for fill in consumer:
                print(f"{fill.venue:6} {fill.source:16} {fill.instrument:24} {fill.side:4} "
                      f"{fill.quantity:>12} @ {fill.price:<10} fee {fill.fee if fill.fee is not None else '-'} "
                      f"id {fill.fill_id}", flush=True)

        task = asyncio.create_task(consume())
        await asyncio.wait({task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m publisher.consumer",
        description="Print fills from Kafka (read_committed). Kafka settings as in the publisher's kafka: section.")
    parser.add_argument("--config", metavar="PATH", help="a publisher config: its kafka: section is used")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT,...", help="required unless --config gives it")
    parser.add_argument("--topics", default="fills.kalshi,fills.zll", help="comma-separated (default: %(default)s)")
    parser.add_argument("--group-id", default=None,
                        help="commit the offsets of printed fills in this group (default: none, replay)")
    parser.add_argument("--security-protocol", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
    parser.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password-file", metavar="PATH")
    parser.add_argument("--sasl-password-env", metavar="VARIABLE")
    parser.add_argument("--ssl-cafile", metavar="PATH")
    parser.add_argument("--ssl-certfile", metavar="PATH")
    parser.add_argument("--ssl-keyfile", metavar="PATH")
    parser.add_argument("--ssl-key-password-file", metavar="PATH")
    parser.add_argument("--ssl-key-password-env", metavar="VARIABLE")
    parser.add_argument("--client-id")
    parser.add_argument("--no-check-crcs", action="store_true",
                        help="needed only against librdkafka's mock broker (test/demo)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m publisher.consumer`: exit 2 naming the setting for a bad one."""
    args = build_parser().parse_args(argv)
    try:
        kafka, sasl_password, ssl_key_password = load_kafka_settings(_kafka_section(args))
    except ConfigError as exc:
        print(f"python -m publisher.consumer: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    topics = [t for t in args.topics.split(",") if t]
    try:
        asyncio.run(_print_fills(kafka, topics, sasl_password, ssl_key_password, args.group_id))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
