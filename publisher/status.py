"""`fill-publisher status`: each configured source's committed checkpoint, read from Kafka.

Reads the checkpoint topic with a read_committed consumer (no group, no offsets committed) and
publishes nothing, so it is safe beside a running instance.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from publisher.checkpoint import Checkpoint, read_checkpoints
from publisher.config import Settings
from publisher.dedupe import KEY_SIZE
from publisher.kafkaclient import consumer_options
from publisher.shards import layout
from publisher.venues.base import SourceConfig


@dataclass(frozen=True)
class SourceStatus:
    """One line of `status`: None fields when the source has no checkpoint yet."""

    source: str
    shard: int
    watermark: str | None
    window_fills: int | None
    written_at: str | None


def rfc3339(ns: int) -> str:
    """`ns` since the epoch as RFC 3339 UTC with milliseconds, e.g. `2026-12-02T18:30:00.123Z`."""
    moment = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def source_status(source: SourceConfig, shard: int, checkpoint: Checkpoint | None) -> SourceStatus:
    if checkpoint is None:
        return SourceStatus(source.name, shard, None, None, None)
    window = sum(len(keys) // KEY_SIZE for keys in checkpoint.seen.values())
    written = rfc3339(checkpoint.written_at_ns) if checkpoint.written_at_ns else None
    return SourceStatus(source.name, shard, rfc3339(checkpoint.watermark_ns), window, written)


async def read_status(settings: Settings) -> list[SourceStatus]:
    """The status of every configured source, in config order: each read where its shard keeps
    it (with a cluster, the shard's partition; without, wherever its name hashes)."""
    kafka = settings.config.kafka
    options = consumer_options(kafka, settings.sasl_password, settings.ssl_key_password)
    shards = layout(settings.config)
    found: dict[str, Checkpoint] = {}
    for shard in shards.shards:
        if shard.sources:
            found.update(await read_checkpoints(
                kafka.checkpoint_topic, [s.name for s in shard.sources], options,
                partitions=None if shard.checkpoint_partition is None else [shard.checkpoint_partition]))
    sources: Sequence[SourceConfig] = settings.config.sources
    return [source_status(s, shards.shard_of_source(s.name), found.get(s.name)) for s in sources]


def render(statuses: Sequence[SourceStatus], as_json: bool) -> str:
    """The text table (one line per source) or the JSON array of `--json`."""
    if as_json:
        return json.dumps([asdict(s) for s in statuses], indent=2)
    width = max(len("SOURCE"), *(len(s.source) for s in statuses))
    lines = [f"{'SOURCE':<{width}}  SHARD  {'WATERMARK':<24}  {'WINDOW_FILLS':>12}  WRITTEN_AT"]
    for s in statuses:
        if s.watermark is None:
            lines.append(f"{s.source:<{width}}  {s.shard:>5}  {'-':<24}  {'-':>12}  -  (no checkpoint yet)")
        else:
            lines.append(f"{s.source:<{width}}  {s.shard:>5}  {s.watermark:<24}  {s.window_fills:>12}  "
                         f"{s.written_at or '-'}")
    return "\n".join(lines)
