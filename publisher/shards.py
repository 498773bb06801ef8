"""Which shard each source belongs to, and what a shard is in Kafka.

`cluster.shards: S` splits the sources into S shards: a source's shard is its `shard` setting,
else a stable hash of its name modulo S. The hash is Kafka's own partitioner (murmur2 of the UTF-8
name, as the Java client and aiokafka compute it), so it is the same on every machine, Python
version and Kafka client, and the shard of a source is the partition Kafka would give a record
keyed by its name in a topic of S partitions.

Shard `k` is, in Kafka:
- the transactional id `<transactional_id_prefix>-<k>`: the shard's one producer (its owner
  initialises it, which fences every earlier owner and aborts what it left open);
- partition `k` of the checkpoint topic: every checkpoint record of its sources;
- partition `k` of the checkpoint topic in the instances' consumer group (`cluster.group_id`):
  the group's assignment of that partition is the ownership of the shard.

With one shard (the default) there is no group: one instance owns every source under the
transactional id `<transactional_id_prefix>`, its checkpoints in the partition the hash of each
source name picks, exactly as before sharding existed, and a second instance fences the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from publisher.config import Config
from publisher.sink.batching import partition_for
from publisher.venues.base import SourceConfig


def shard_of(name: str, shards: int) -> int:
    """The shard of an unpinned source called `name` among `shards` (Kafka's murmur2 partitioner)."""
    return partition_for(name.encode(), range(shards))


def source_shard(source: SourceConfig, shards: int) -> int:
    """The shard a source belongs to: its `shard` setting, else :func:`shard_of` its name."""
    return source.shard if source.shard is not None else shard_of(source.name, shards)


@dataclass(frozen=True)
class Shard:
    """One shard: its sources and where it lives in Kafka."""

    number: int
    #: the transactional id of the shard's producer
    transactional_id: str
    #: the checkpoint topic partition every checkpoint record of its sources goes to and is
    #: restored from; None without a cluster: the hash of each source's name picks its partition
    #: and the restore reads them all
    checkpoint_partition: int | None
    sources: tuple[SourceConfig, ...]


@dataclass(frozen=True)
class ShardLayout:
    """Every shard of a config, and how instances share them."""

    shards: tuple[Shard, ...]
    #: the consumer group the instances share the shards through; None with one shard (a single
    #: instance owns everything, no group)
    group_id: str | None

    @property
    def grouped(self) -> bool:
        return self.group_id is not None

    def shard(self, number: int) -> Shard | None:
        """Shard `number`, or None for a checkpoint partition beyond the shards (a topic left with
        more partitions than shards by `fill-publisher reshard`: such a partition holds nothing)."""
        return self.shards[number] if 0 <= number < len(self.shards) else None

    def shard_of_source(self, name: str) -> int:
        return next(shard.number for shard in self.shards if any(s.name == name for s in shard.sources))


def layout(config: Config) -> ShardLayout:
    """The shards of `config` (see the module docstring)."""
    kafka, cluster = config.kafka, config.cluster
    count = cluster.shards
    members: list[list[SourceConfig]] = [[] for _ in range(count)]
    for source in config.sources:
        members[source_shard(source, count)].append(source)
    if count == 1:
        only = Shard(0, kafka.transactional_id_prefix, None, tuple(members[0]))
        return ShardLayout((only,), None)
    shards = tuple(Shard(k, f"{kafka.transactional_id_prefix}-{k}", k, tuple(members[k])) for k in range(count))
    return ShardLayout(shards, cluster.group_id or kafka.transactional_id_prefix)
