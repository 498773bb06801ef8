"""`fill-publisher audit`: the fills a venue reports against the committed records on Kafka.

For each source the audit asks the venue, through the source's own adapter (the same walk, and for
Kalshi the same historical endpoint, as a poll), for every fill executed in the audit window, and
reads the source's committed records of its fills topic (read_committed, sought by record time to
a margin before the window, read to the end offsets taken at the start). It publishes nothing and
never touches a checkpoint: the consumer has no group and commits no offsets.

The window is `[now - since, now - poll_interval_s - SETTLE_MARGIN_S)`: the newest part is left
out because a fill executed there may be fetched but not committed yet (a poll in flight, a
transaction in flight), which is not a missing fill.

Per source it reports:

- `missing`: executed in the window at the venue, no committed record on Kafka;
- `duplicated`: more than one committed record of one fill id (any window fill of the source);
- `mismatched`: a record whose values differ from what the venue's fill normalises to now
  (:data:`COMPARED_FIELDS`; `observed_at_ns` is ours, not the venue's, and `source`,
  `schema_version` and `venue` are fixed per source). For ZLL a mismatch is confirmed with the
  single-fill endpoint before it is reported (a list page that served one stale copy is not a
  mismatch when the venue's own record of the fill agrees with Kafka).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from publisher.config import ConfigError, Settings, fills_topic
from publisher.event import FillEvent
from publisher.kafkaclient import admin_options, consumer_options
from publisher.venues import VENUES
from publisher.venues.base import SourceConfig, VenueAdapter
from publisher.venues.fields import NS
from publisher.venues.transport import SourceTransport

log = logging.getLogger(__name__)

#: seconds left out at the new end of the window on top of the source's poll interval: one poll
#: and one Kafka transaction in flight, and clock drift between the venue and us
SETTLE_MARGIN_S = 10.0
#: how far before the window's start the Kafka read begins (record times are our produce times,
#: never earlier than the execution time but for clock drift between the venue and us)
SEEK_MARGIN_S = 60.0
#: the event fields compared between the venue's fill and its record
COMPARED_FIELDS = ("fill_id", "order_id", "instrument", "side", "price", "quantity", "fee", "fee_currency",
                   "liquidity", "executed_at_ns", "venue_fields")

EXIT_CLEAN = 0
EXIT_FINDINGS = 1


@dataclass(slots=True)
class SourceAudit:
    """One source's result; `error` set when the venue or Kafka could not be read."""

    source: str
    venue: str
    venue_fills: int = 0
    published: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.error is None and not (self.missing or self.duplicated or self.mismatched)

    def as_json(self) -> dict[str, Any]:
        """The contract's shape of one source."""
        return {"source": self.source, "venue": self.venue, "venue_fills": self.venue_fills,
                "published": self.published, "missing": self.missing, "duplicated": self.duplicated,
                "mismatched": self.mismatched}


def values(event: FillEvent) -> tuple[Any, ...]:
    """The compared values of an event (see :data:`COMPARED_FIELDS`)."""
    return tuple(msgspec.to_builtins(getattr(event, name)) for name in COMPARED_FIELDS)


@dataclass(slots=True)
class Window:
    """The audited execution times of one source, `[start_ns, end_ns)`."""

    start_ns: int
    end_ns: int

    def __contains__(self, executed_at_ns: int) -> bool:
        return self.start_ns <= executed_at_ns < self.end_ns


def window_of(source: SourceConfig, since_s: float | None, now_ns: int) -> Window:
    """The window the audit checks for `source` at `now_ns`."""
    since = source.lookback_s if since_s is None else since_s
    return Window(now_ns - int(since * NS), now_ns - int((source.poll_interval_s + SETTLE_MARGIN_S) * NS))


async def venue_fills(adapter: VenueAdapter, window: Window) -> list[FillEvent]:
    """Every fill the venue reports executed in `window`, normalised as a poll would."""
    result = await adapter.fetch(window.start_ns, None, time.time_ns)
    return [fill for fill in result.fills if fill.executed_at_ns in window]


async def kafka_records(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, topic: str, source: str,
                        from_ns: int) -> list[FillEvent]:
    """The committed records of `source` on `topic`, from record time `from_ns` to the end offsets."""
    described = await admin.describe_topics([topic])
    partitions = [p["partition"] for d in described if d.get("error_code") == 0 for p in d["partitions"]]
    if not partitions:
        return []
    assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assignment)
    end = await consumer.end_offsets(assignment)
    from_ms = max(0, from_ns // 1_000_000)
    starts = await consumer.offsets_for_times({tp: from_ms for tp in assignment})
    remaining = set()
    for tp in assignment:
        found = starts.get(tp)
        if found is not None:
            consumer.seek(tp, found.offset)
        elif end[tp] == 0 or not await _newer_at_end(consumer, tp, end[tp], from_ms):
            continue  # no record at or after that time
        else:
            # the broker cannot look offsets up by time (librdkafka's mock answers "none" for
            # every time): read the partition from its start rather than miss records
            log.warning("%s[%d]: the broker found no offset for a time its newest records pass; "
                        "reading the partition from the start", topic, tp.partition)
            await consumer.seek_to_beginning(tp)
        if await consumer.position(tp) < end[tp]:
            remaining.add(tp)
    decoder = msgspec.json.Decoder(FillEvent)
    prefix = f"{source}:".encode()
    events: list[FillEvent] = []
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= end[tp] or record.key is None or not record.key.startswith(prefix):
                    continue
                try:
                    event = decoder.decode(record.value or b"")
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("%s[%d]@%d: not a fill event (%s); not audited", tp.topic, tp.partition,
                                record.offset, exc)
                    continue
                if event.source == source:
                    events.append(event)
        for tp in list(remaining):
            if await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
    return events


#: how many offsets before a partition's end :func:`_newer_at_end` looks at
_PROBE_OFFSETS = 50


#: how long :func:`_newer_at_end` reads at most
_PROBE_TIMEOUT_S = 10.0


async def _newer_at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, from_ms: int) -> bool:
    """Whether one of the last records before `end` was written at or after `from_ms`.

    Read to `end`, not one fetch: a fetch may hand out part of the records (the newest come last).
    """
    consumer.seek(tp, max(0, end - _PROBE_OFFSETS))
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while await consumer.position(tp) < end and time.monotonic() < deadline:
        batches = await consumer.getmany(tp, timeout_ms=1000)
        if any(record.timestamp >= from_ms for record in batches.get(tp, [])):
            return True
    return False


def compare(source: SourceConfig, window: Window, at_venue: Sequence[FillEvent],
            on_kafka: Sequence[FillEvent]) -> tuple[SourceAudit, dict[str, FillEvent]]:
    """The findings of one source, and the venue fill of each mismatched id (to confirm them)."""
    report = SourceAudit(source.name, source.venue_name, venue_fills=len(at_venue))
    records: dict[str, list[FillEvent]] = {}
    for event in on_kafka:
        records.setdefault(event.fill_id, []).append(event)
    counts = Counter(event.fill_id for event in on_kafka if event.executed_at_ns in window)
    report.duplicated = sorted(fill_id for fill_id, n in counts.items() if n > 1)
    suspects: dict[str, FillEvent] = {}
    published = 0
    for fill in sorted(at_venue, key=lambda f: (f.executed_at_ns, f.fill_id)):
        copies = records.get(fill.fill_id)
        if not copies:
            report.missing.append(fill.fill_id)
            continue
        published += 1
        want = values(fill)
        if any(values(copy) != want for copy in copies):
            suspects[fill.fill_id] = fill
    report.published = published
    return report, suspects


async def audit_source(settings: Settings, source: SourceConfig, since_s: float | None,
                       consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, tls: Any) -> SourceAudit:
    """Audit one source (errors reading the venue or Kafka end up in `error`)."""
    now_ns = time.time_ns()
    window = window_of(source, since_s, now_ns)
    transport = SourceTransport(source.base_url, tls)
    try:
        adapter: VenueAdapter = VENUES.of(source).adapter(source, settings.source_secrets[source.name], transport,
                                                          lambda: None)
        topic = fills_topic(settings.config.kafka, source.venue_name)
        at_venue = await venue_fills(adapter, window)
        on_kafka = await kafka_records(consumer, admin, topic, source.name, window.start_ns - int(SEEK_MARGIN_S * NS))
        report, suspects = compare(source, window, at_venue, on_kafka)
        confirm: Callable[[str], Any] | None = getattr(adapter, "fetch_one", None)
        for fill_id, fill in suspects.items():
            if confirm is not None:
                again = await confirm(fill_id)
                if again is not None:
                    fill = again
            copies = [event for event in on_kafka if event.fill_id == fill_id]
            if any(values(copy) != values(fill) for copy in copies):
                report.mismatched.append(fill_id)
        await adapter.aclose()
        return report
    except Exception as exc:  # noqa: BLE001 - one source's failure is reported, the others still run
        return SourceAudit(source.name, source.venue_name, error=f"{type(exc).__name__}: {exc}")
    finally:
        await transport.aclose()


def kafka_options(settings: Settings) -> dict[str, Any]:
    """The audit's Kafka client settings: the service's own (TLS with the client key's password,
    SASL, CRC checks) under a client id of its own, so brokers' logs and quotas tell it apart."""
    kafka = settings.config.kafka
    options = consumer_options(kafka, settings.sasl_password, settings.ssl_key_password)
    options["client_id"] = f"{kafka.client_id}-audit"
    return options


async def run_audit(settings: Settings, names: Sequence[str] = (), since_s: float | None = None) -> list[SourceAudit]:
    """Audit the named sources (all of them when `names` is empty), in config order."""
    sources = [s for s in settings.config.sources if not names or s.name in names]
    options = kafka_options(settings)
    consumer = AIOKafkaConsumer(**options, isolation_level="read_committed", enable_auto_commit=False, group_id=None)
    admin = AIOKafkaAdminClient(**admin_options(options))
    await consumer.start()
    await admin.start()
    tls = httpx.create_ssl_context()
    try:
        return [await audit_source(settings, source, since_s, consumer, admin, tls) for source in sources]
    finally:
        await admin.close()
        await consumer.stop()


def render_table(reports: Sequence[SourceAudit]) -> str:
    """The human-readable report: one row per source, then the ids of every finding."""
    header = ("source", "venue", "venue_fills", "published", "missing", "duplicated", "mismatched")
    rows = [header] + [
        (r.source, r.venue, str(r.venue_fills), str(r.published), str(len(r.missing)), str(len(r.duplicated)),
         str(len(r.mismatched))) if r.error is None else (r.source, r.venue, "-", "-", "-", "-", "-")
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for r in reports:
        if r.error is not None:
            lines.append(f"{r.source}: audit failed: {r.error}")
        for what in ("missing", "duplicated", "mismatched"):
            for fill_id in getattr(r, what):
                lines.append(f"{r.source}: {what} {fill_id}")
    return "\n".join(lines)


def render_json(reports: Sequence[SourceAudit]) -> str:
    """The contract's `--json` document."""
    return msgspec.json.encode({"sources": [r.as_json() for r in reports]}).decode()


def main(settings: Settings, names: Sequence[str], since_s: float | None, as_json: bool) -> int:
    """`fill-publisher audit`: print the report; 0 when every source is clean, else 1."""
    unknown = [name for name in names if name not in {s.name for s in settings.config.sources}]
    if unknown:
        raise ConfigError("--source", f"no source named {', '.join(unknown)}")
    reports = asyncio.run(run_audit(settings, names, since_s))
    print(render_json(reports) if as_json else render_table(reports))
    for r in reports:
        if r.error is not None:
            log.error("source %s: audit failed: %s", r.source, r.error)
    return EXIT_CLEAN if all(r.clean for r in reports) else EXIT_FINDINGS
