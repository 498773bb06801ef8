"""Group membership and shard ownership without a broker: the rebalance callbacks, readiness, the
ownership check before a shard's producer starts, and what a lost shard means with and without a
cluster. Real Kafka runs the same code in tests/test_realkafka_shards.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError

import publisher.ownership
from publisher.config import Settings, load_settings
from publisher.membership import GroupMembership
from publisher.metrics import Metrics
from publisher.ownership import Ownership
from publisher.shards import layout
from publisher.sink import TransactionalIdFencedError


def settings(tmp_path: Path, shards: int) -> Settings:
    key = tmp_path / "zll.key"
    key.write_text("c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==\n")
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "kafka.test:9092", "transactional_id_prefix": "fp", "checkpoint_topic": "cp"},
        "sources": [{"name": f"z{i}", "venue": "zll", "base_url": "https://zll.test", "api_key_file": str(key),
                     "subaccount_index": i, "shard": i % shards} for i in range(shards)],
    }
    if shards > 1:
        doc["cluster"] = {"shards": shards}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_settings(path, {})


class FakeRunner:
    """Stands in for ShardRunner: runs until given back, or ends as the test says."""

    def __init__(self, shard: Any, *_args: Any, confirm: Any = None, **_kwargs: Any):
        self.shard = shard
        self.number = shard.number
        self.confirm = confirm
        self.rebuilds = 0
        self.pollers: list[Any] = []
        self.given_back: float | None = None
        self.dropped = False
        self.ending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason: str | None = "restoring checkpoints"

    def not_ready_reason(self) -> str | None:
        return self.reason

    async def run(self) -> None:
        await self.ending

    async def give_back(self, budget_s: float) -> bool:
        self.given_back = budget_s
        if not self.ending.done():
            self.ending.set_result(None)
        return True

    async def drop(self) -> None:
        self.dropped = True

    @property
    def sink(self) -> Any:
        return self


@pytest.fixture
def fake_runners(monkeypatch: pytest.MonkeyPatch) -> list[FakeRunner]:
    made: list[FakeRunner] = []

    def make(*args: Any, **kwargs: Any) -> FakeRunner:
        runner = FakeRunner(*args, **kwargs)
        made.append(runner)
        return runner

    monkeypatch.setattr(publisher.ownership, "ShardRunner", make)
    return made


class FakeConsumer:
    def __init__(self, answer: BaseException | None = None):
        self.answer = answer
        self.paused: list[TopicPartition] = []
        self.commits: list[dict[TopicPartition, Any]] = []

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused += partitions

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets)
        if self.answer is not None:
            raise self.answer


def group(tmp_path: Path, shards: int = 4) -> tuple[GroupMembership, Ownership, Metrics]:
    config = settings(tmp_path, shards)
    metrics = Metrics()
    ownership = Ownership(layout(config.config), config, metrics, tls=None)  # type: ignore[arg-type]
    return GroupMembership(config, ownership, metrics), ownership, metrics


def tps(*partitions: int) -> set[TopicPartition]:
    return {TopicPartition("cp", p) for p in partitions}


async def test_assignment_takes_shards_revocation_gives_them_back_and_readiness_follows(
        tmp_path: Path, fake_runners: list[FakeRunner]) -> None:
    membership, ownership, metrics = group(tmp_path)
    membership._consumer = FakeConsumer()  # type: ignore[assignment]
    assert membership.not_ready_reason() == "waiting for Kafka: checkpoint topic"
    membership.on_partitions_assigned(tps(1, 3, 6))  # 6: a partition beyond the 4 shards holds nothing
    assert ownership.owned == [1, 3] and metrics.registry.get_sample_value("fillpub_shards_owned") == 2
    assert metrics.registry.get_sample_value("fillpub_rebalances_total") == 1 and set(membership._consumer.paused) == tps(1, 3, 6)  # type: ignore[union-attr]
    assert membership.not_ready_reason() == "shard 1: restoring checkpoints"
    for runner in fake_runners:
        runner.reason = None
    assert membership.not_ready_reason() is None
    await membership.on_partitions_revoked(tps(1, 3, 6))
    assert ownership.owned == [] and all(r.given_back is not None for r in fake_runners)
    assert membership.not_ready_reason() == "rebalancing"
    membership.on_partitions_assigned(set())  # more members than shards: a standby, ready
    assert ownership.owned == [] and membership.not_ready_reason() is None


async def test_a_shard_still_running_but_no_longer_assigned_is_given_back(tmp_path: Path,
                                                                         fake_runners: list[FakeRunner]) -> None:
    membership, ownership, _ = group(tmp_path)
    membership.on_partitions_assigned(tps(0, 1))
    membership.on_partitions_assigned(tps(1, 2))  # a revocation that failed would leave shard 0 here
    await asyncio.sleep(0.01)
    assert ownership.owned == [1, 2] and fake_runners[0].given_back is not None


@pytest.mark.parametrize(("answer", "ours"), [(None, True), (CommitFailedError(), False),
                                              (IllegalStateError(), False)])
async def test_confirm_asks_kafka_with_an_offset_commit_of_the_shards_partition(
        tmp_path: Path, answer: BaseException | None, ours: bool) -> None:
    membership, _, _ = group(tmp_path)
    consumer = FakeConsumer(answer)
    membership._consumer = consumer  # type: ignore[assignment]
    assert not await membership.confirm(2)  # no assignment yet: nothing is ours
    membership.assigned = True
    assert await membership.confirm(2) is ours
    assert list(consumer.commits[-1]) == [TopicPartition("cp", 2)]


async def test_confirm_raises_when_kafka_cannot_tell(tmp_path: Path) -> None:
    membership, _, _ = group(tmp_path)
    membership._consumer = FakeConsumer(KafkaConnectionError())  # type: ignore[assignment]
    membership.assigned = True
    with pytest.raises(KafkaConnectionError):
        await membership.confirm(0)


async def test_in_a_group_a_lost_shard_is_dropped_and_the_instance_carries_on(
        tmp_path: Path, fake_runners: list[FakeRunner]) -> None:
    membership, ownership, _ = group(tmp_path)
    membership.on_partitions_assigned(tps(0, 1))
    fake_runners[0].ending.set_exception(TransactionalIdFencedError("fenced"))
    await asyncio.sleep(0.01)
    await ownership.settle()
    assert ownership.owned == [1] and fake_runners[0].dropped and not ownership.ended.is_set()


async def test_without_a_cluster_a_lost_shard_ends_the_instance(tmp_path: Path,
                                                                 fake_runners: list[FakeRunner]) -> None:
    config = settings(tmp_path, 1)
    ownership = Ownership(layout(config.config), config, Metrics(), tls=None)  # type: ignore[arg-type]
    ownership.take([0])
    assert fake_runners[0].shard.transactional_id == "fp" and fake_runners[0].confirm is None
    fake_runners[0].ending.set_exception(TransactionalIdFencedError("fenced"))
    await asyncio.wait_for(ownership.ended.wait(), 1)
    await ownership.settle()
    assert isinstance(ownership.lost, TransactionalIdFencedError) and fake_runners[0].dropped


async def test_any_other_failure_of_a_shard_ends_the_instance(tmp_path: Path,
                                                              fake_runners: list[FakeRunner]) -> None:
    membership, ownership, _ = group(tmp_path)
    membership.on_partitions_assigned(tps(3))
    fake_runners[0].ending.set_exception(RuntimeError("boom"))
    await asyncio.wait_for(ownership.ended.wait(), 1)
    assert isinstance(ownership.failure, RuntimeError) and ownership.lost is None
