"""`fill-publisher reshard`: the offline step that changes `cluster.shards` (or a source's `shard`).

A source's checkpoint lives where its shard keeps it: partition `k` of the checkpoint topic for
shard `k` (without a cluster, the partition the hash of its name picks). A new layout would look
for it somewhere else and, finding none, start the source afresh: the last `lookback_s` published
again, or fills missed. So with every instance stopped, this command, given the NEW config:

1. fences every transactional id an instance of the old or the new layout may hold
   (`<prefix>` and `<prefix>-<k>` for every partition of the checkpoint topic and every new
   shard): an instance left running can publish nothing more, its open transaction is aborted;
2. reads every configured source's newest committed checkpoint in every partition
   (read_committed) and keeps the newest of each source (by `written_at_ns`);
3. adds partitions to the checkpoint topic when it has fewer than the new shards (Kafka cannot
   take partitions away: with fewer shards the partitions beyond them stay, empty, and an
   instance owning one has nothing to do);
4. in one transaction, writes each source's checkpoint into the partition of its new shard and
   a tombstone for it (and its part records) in every other partition that held one.

Nothing is published to the fills topics. `--dry-run` prints the plan and touches nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from publisher.checkpoint import Checkpoint, checkpoint_records, part_key, read_checkpoints
from publisher.config import Settings
from publisher.kafkaclient import admin_options, client_options, consumer_options, topic_partitions
from publisher.metrics import Metrics
from publisher.shards import layout
from publisher.sink.batching import partition_for
from publisher.sink.producer import TransactionalProducer
from publisher.sink.records import record_budget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """What resharding does to one source's checkpoint."""

    source: str
    shard: int
    #: the partition the new layout reads it from
    target: int
    #: the newest checkpoint and the partition it is in now (None: the source has none)
    found: int | None
    checkpoint: Checkpoint | None
    #: every partition holding a checkpoint of the source other than the target
    stale: tuple[int, ...]

    @property
    def moves(self) -> bool:
        return self.checkpoint is not None and (self.found != self.target or bool(self.stale))

    def line(self) -> str:
        if self.checkpoint is None:
            return f"{self.source}: shard {self.shard}, no checkpoint (its first start publishes the last lookback_s)"
        if not self.moves:
            return f"{self.source}: shard {self.shard}, checkpoint stays in partition {self.target}"
        extra = f", tombstones in {', '.join(map(str, self.stale))}" if self.stale else ""
        return f"{self.source}: shard {self.shard}, checkpoint moves from partition {self.found} to {self.target}{extra}"


async def plan(settings: Settings) -> tuple[list[Move], int]:
    """What resharding to `settings`' layout does, and how many partitions the checkpoint topic has."""
    kafka = settings.config.kafka
    options = consumer_options(kafka, settings.sasl_password, settings.ssl_key_password)
    present = await topic_partitions(options, kafka.checkpoint_topic) or set()
    shards = layout(settings.config)
    count = max(len(present), len(shards.shards))
    names = [s.name for s in settings.config.sources]
    by_partition: dict[int, dict[str, Checkpoint]] = {}
    for partition in sorted(present):
        by_partition[partition] = await read_checkpoints(kafka.checkpoint_topic, names, options, partitions=[partition])
    moves = []
    for shard in shards.shards:
        for source in shard.sources:
            target = shard.checkpoint_partition
            if target is None:
                target = partition_for(source.name.encode(), range(count))
            held = {p: found[source.name] for p, found in by_partition.items() if source.name in found}
            newest = max(held, key=lambda p: (held[p].written_at_ns, held[p].watermark_ns), default=None)
            moves.append(Move(source.name, shard.number, target, newest,
                              held[newest] if newest is not None else None,
                              tuple(sorted(p for p in held if p != target))))
    return moves, len(present)


async def reshard(settings: Settings, *, dry_run: bool = False) -> list[Move]:
    """Carry out :func:`plan` (see the module docstring); returns the moves."""
    kafka = settings.config.kafka
    moves, partitions = await plan(settings)
    if dry_run:
        return moves
    shards = len(layout(settings.config).shards)
    prefix = kafka.transactional_id_prefix
    ids = [prefix, *(f"{prefix}-{k}" for k in range(max(partitions, shards)))]
    await asyncio.gather(*(_fence(settings, tid) for tid in ids))
    # read again: fencing aborted what a running instance had open, and the plan must see the
    # state no instance can change any more
    moves, partitions = await plan(settings)
    if partitions < shards:
        await _add_partitions(settings, shards)
    todo = [m for m in moves if m.moves]
    if todo:
        await _write(settings, todo)
    return moves


async def _fence(settings: Settings, transactional_id: str) -> None:
    producers = TransactionalProducer(settings.config.kafka, settings.sasl_password, Metrics(), transactional_id,
                                      ssl_key_password=settings.ssl_key_password)
    await producers.start_once()
    await producers.close(2.0)


async def _add_partitions(settings: Settings, total: int) -> None:
    kafka = settings.config.kafka
    admin = AIOKafkaAdminClient(**admin_options(client_options(kafka, settings.sasl_password,
                                                               settings.ssl_key_password)))
    await admin.start()
    try:
        await admin.create_partitions({kafka.checkpoint_topic: NewPartitions(total)})
    finally:
        await admin.close()
    # the new partitions must be known before records go to them
    options = consumer_options(kafka, settings.sasl_password, settings.ssl_key_password)
    for _ in range(100):
        if len(await topic_partitions(options, kafka.checkpoint_topic) or ()) >= total:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the checkpoint topic {kafka.checkpoint_topic} did not grow to {total} partitions")


async def _write(settings: Settings, moves: list[Move]) -> None:
    """Every move's records and tombstones in one transaction."""
    kafka = settings.config.kafka
    producers = TransactionalProducer(kafka, settings.sasl_password, Metrics(),
                                      f"{kafka.transactional_id_prefix}-reshard",
                                      ssl_key_password=settings.ssl_key_password)
    await producers.start_once()
    producer = producers.current
    assert producer is not None
    topic = kafka.checkpoint_topic
    try:
        await producer.begin_transaction()
        sends = []
        for move in moves:
            assert move.checkpoint is not None
            records = checkpoint_records(move.checkpoint, record_budget(kafka.max_record_bytes))
            for key, value in records:
                sends.append(await producer.send(topic, value, key=key, partition=move.target))
            parts = max(move.checkpoint.parts, len(records) - 1)
            for partition in move.stale:
                keys = [move.source.encode(), *(part_key(move.source, i) for i in range(1, parts + 1))]
                for key in keys:
                    sends.append(await producer.send(topic, None, key=key, partition=partition))
        await asyncio.gather(*sends)
        await producer.commit_transaction()
    finally:
        await producers.close(5.0)
