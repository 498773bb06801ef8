"""Shards on real Apache Kafka: several instances share the sources through a consumer group.

Every test runs real `fill-publisher run` child processes with one config (`cluster.shards`), the
venue simulators over HTTP and the session's single-node Kafka, and ends with both witnesses of
:func:`tests.test_realkafka_delivery.judge`: a plain read_committed consumer and the raw
batch/marker reader, every fill exactly once, no transaction left open.

What only real Kafka shows here: the group coordinator noticing a dead or frozen member (session
timeout) and reassigning its shards; a new owner's InitProducerId fencing the old one and aborting
its open transaction; the thawed zombie's commit refused.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from publisher.config import KafkaConfig
from publisher.kafkaclient import checkpoint_topic_configs
from tests.harness.delivery import COMMITTED, read_log
from tests.harness.kafka import KafkaCluster, topic_configs
from tests.harness.stack import PublisherProcess, Stack, free_port, wait_until
from tests.test_faults_kafka import COMMON, cleanup, generate, observe  # noqa: F401 - cleanup is a fixture
from tests.test_realkafka_delivery import FAST_KAFKA, fills_topics, judge_run

pytestmark = [pytest.mark.realkafka, pytest.mark.integration]

#: the group's session timeout: the test broker's smallest allowed (group.min.session.timeout.ms,
#: lowered from Kafka's default 6 s in tests/harness/kafka.py)
SESSION_S = 3
_ASSIGNED = re.compile(r"assigned shards (?P<shards>[0-9, ]+|none) to this instance")


@dataclass
class Fleet:
    """Instances of one config, each its own process, HTTP port and log file."""

    stack: Stack
    tmp: Path
    cleanup: list[Any]
    instances: dict[str, PublisherProcess] = field(default_factory=dict)

    def start(self, name: str, *, instance_id: str | None = None) -> PublisherProcess:
        port = free_port()
        env = {"FILLPUB_HTTP__PORT": str(port)}
        if instance_id is not None:
            env["FILLPUB_CLUSTER__INSTANCE_ID"] = instance_id
        proc = PublisherProcess(self.stack.write_config(), self.tmp / f"{name}.log", port, env=env)
        self.cleanup.append(proc)
        self.instances[name] = proc.start()
        return proc

    def alive(self) -> dict[str, PublisherProcess]:
        return {name: p for name, p in self.instances.items() if p.alive}

    async def owned(self, name: str) -> int | None:
        """Shards instance `name` owns (None: not answering, e.g. frozen)."""
        try:
            return int(await asyncio.wait_for(self.instances[name].metric("fillpub_shards_owned"), 1.5))
        except (AssertionError, TimeoutError):
            return None

    async def ownership(self, names: list[str]) -> dict[str, int | None]:
        return {name: await self.owned(name) for name in names}

    async def all_owned(self, names: list[str], shards: int, *, each_at_least: int = 0) -> bool:
        """`names` own every shard between them, each at least `each_at_least`, and are all ready."""
        owned = await self.ownership(names)
        if any(v is None or v < each_at_least for v in owned.values()) or sum(v or 0 for v in owned.values()) != shards:
            return False
        for name in names:
            response = await self.instances[name].get("/readyz")
            if response is None or response.status_code != 200:
                return False
        return True

    def assigned(self, name: str) -> list[int]:
        """The shards the instance's last assignment gave it (from its log)."""
        found = [m["shards"] for m in _ASSIGNED.finditer(self.instances[name].logs())]
        assert found, self.instances[name].log_tail()
        return [] if found[-1] == "none" else [int(n) for n in found[-1].split(",")]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(2000)}" for name, p in self.instances.items())


async def sharded_stack(tmp: Path, kafka: KafkaCluster, prefix: str, shards: int, sources: int) -> Stack:
    """`sources` sources (Kalshi and ZLL by turns), `cluster.shards: shards`; the publisher creates
    the topics itself (the checkpoint topic with one partition per shard)."""
    stack = Stack(tmp, kafka.bootstrap, prefix, kafka_extra={**FAST_KAFKA, "check_crcs": True},
                  sections={"cluster": {"shards": shards, "session_timeout_s": SESSION_S}})
    for i in range(sources):
        if i % 2:
            await stack.zll(f"zll-{i}", **COMMON)
        else:
            await stack.kalshi(f"kalshi-{i}", **COMMON)
    return stack


def sources_of(stack: Stack, shards: list[int], count: int) -> list[str]:
    from publisher.config import load_settings
    from publisher.shards import layout

    plan = layout(load_settings(stack.write_config()).config)
    assert len(plan.shards) == count
    return [s.name for n in shards for s in plan.shards[n].sources]


async def first_publish_elsewhere(fleet: Fleet, survivors: list[str], moved: list[str], since: float,
                                  timeout_s: float) -> float:
    """Seconds from `since` until a survivor has committed a fill of a moved source."""
    async def published() -> bool:
        for name in survivors:
            for source in moved:
                if await fleet.instances[name].metric("fillpub_fills_published_total", source=source):
                    return True
        return False

    await wait_until(published, "a moved source publishing on a survivor", timeout_s, interval_s=0.1,
                     context=fleet.logs)
    return time.monotonic() - since


def producers_of(raw: list[Any], checkpoint_topic: str, shards: list[int]) -> set[tuple[int, int]]:
    """(producer id, epoch) of the shards' current producers: the last committed writer of each
    shard's checkpoint partition."""
    last: dict[int, tuple[int, int]] = {}
    for r in sorted(raw, key=lambda r: r.offset):
        if r.topic == checkpoint_topic and r.partition in shards and r.status == COMMITTED:
            last[r.partition] = (r.producer_id, r.producer_epoch)
    return set(last.values())


async def test_three_instances_share_eight_shards_and_survive_a_kill_and_a_freeze(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """3 instances, 8 shards, 12 sources, fills arriving: every shard owned, each instance some.
    SIGKILL one: its shards move within about a session timeout and its sources publish again.
    Freeze another (SIGSTOP) past the session timeout: its shards move; thawed, it publishes
    nothing for them (the new owner fenced it) and rejoins. Every fill exactly once."""
    shards = 8
    stack = await sharded_stack(tmp_path, real_kafka, topic_prefix, shards, 12)
    cleanup.append(stack)
    fleet = Fleet(stack, tmp_path, cleanup)
    started_ns = time.time_ns()
    generate(stack, 3)
    t0 = time.monotonic()
    for name in ("a", "b", "c"):
        fleet.start(name)
    await wait_until(lambda: fleet.all_owned(["a", "b", "c"], shards, each_at_least=1),
                     "3 instances owning the 8 shards between them", 60, context=fleet.logs)
    shared_after_s = time.monotonic() - t0
    spread = await fleet.ownership(["a", "b", "c"])
    await asyncio.sleep(2)

    # SIGKILL b: its shards go to a and c
    lost = fleet.assigned("b")
    moved = sources_of(stack, lost, shards)
    killed_at = time.monotonic()
    await fleet.instances["b"].kill()
    await wait_until(lambda: fleet.all_owned(["a", "c"], shards), "a and c owning all 8 shards",
                     SESSION_S * 4, context=fleet.logs)
    moved_after_s = time.monotonic() - killed_at
    handover_s = await first_publish_elsewhere(fleet, ["a", "c"], moved, killed_at, 30) if moved else 0.0

    # SIGSTOP c past the session timeout: a takes everything; thawed, c is fenced and rejoins
    frozen_shards = fleet.assigned("c")
    c = fleet.instances["c"]
    assert c.proc is not None
    c.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    # the frozen instance's producers: the last writers of its shards' checkpoint partitions, read
    # before any other instance can take those shards (that takes a session timeout)
    raw = await read_log(real_kafka.bootstrap, [stack.topics["checkpoint"]])
    zombie = producers_of(raw, stack.topics["checkpoint"], frozen_shards)
    assert zombie and time.monotonic() - frozen_at < SESSION_S / 2
    await wait_until(lambda: fleet.all_owned(["a"], shards), "a owning all 8 shards", SESSION_S * 4,
                     context=fleet.logs)
    freeze_moved_s = time.monotonic() - frozen_at
    raw = await read_log(real_kafka.bootstrap, [*fills_topics(stack), stack.topics["checkpoint"]])
    committed_by_zombie = {(r.topic, r.partition, r.offset) for r in raw
                           if (r.producer_id, r.producer_epoch) in zombie and r.status == COMMITTED}
    c.proc.send_signal(signal.SIGCONT)
    await wait_until(lambda: fleet.all_owned(["a", "c"], shards, each_at_least=1),
                     "c rejoined, a and c sharing the shards", SESSION_S * 5, context=fleet.logs)
    await asyncio.sleep(1.5)

    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    raw = await read_log(real_kafka.bootstrap, [*fills_topics(stack), stack.topics["checkpoint"]])
    after = {(r.topic, r.partition, r.offset) for r in raw if (r.producer_id, r.producer_epoch) in zombie
             and r.status == COMMITTED}
    extra = [(r.topic[-12:], r.partition, r.offset, r.producer_id, r.producer_epoch, r.timestamp_ms) for r in raw
             if (r.topic, r.partition, r.offset) in after - committed_by_zombie]
    assert after == committed_by_zombie, f"the thawed zombie committed for shards it lost: {extra[:20]}"
    disowned = fleet.instances["c"].log_lines("no longer this instance's in the consumer group")
    fenced = fleet.instances["c"].log_lines("lost: producer fenced")
    rebalances = {name: await fleet.instances[name].metric("fillpub_rebalances_total") for name in ("a", "c")}
    for name in ("a", "c"):
        code, took = await fleet.instances[name].terminate()
        assert code == 0 and took < 10, fleet.instances[name].log_tail()
    observe("shards 3x8 kill and freeze", shards_per_instance=spread, shared_after_s=round(shared_after_s, 2),
            killed_shards=lost, kill_to_all_owned_s=round(moved_after_s, 2),
            kill_to_first_fill_of_moved_source_s=round(handover_s, 2), frozen_shards=frozen_shards,
            freeze_to_all_owned_s=round(freeze_moved_s, 2), zombie_producers=len(zombie),
            zombie_fenced_shards=len(fenced), zombie_not_retaking=len(disowned),
            rebalances=rebalances, fills_in=len(expected), fills_out=len(consumed))


async def test_scale_one_to_three_to_one_under_load_with_a_standby(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """2 shards: one instance owns both; two more join (one owns a shard, one is a ready standby
    with none); they leave again one by one (SIGTERM: shards handed over at once, no session
    timeout to wait for); repeated rebalances under load, every fill exactly once."""
    shards = 2
    stack = await sharded_stack(tmp_path, real_kafka, topic_prefix, shards, 4)
    cleanup.append(stack)
    fleet = Fleet(stack, tmp_path, cleanup)
    started_ns = time.time_ns()
    generate(stack, 5)
    fleet.start("a")
    await wait_until(lambda: fleet.all_owned(["a"], shards), "a owning both shards", 60, context=fleet.logs)
    fleet.start("b")
    fleet.start("c")
    await wait_until(lambda: fleet.all_owned(["a", "b", "c"], shards), "3 instances, 2 shards", 60,
                     context=fleet.logs)
    spread = await fleet.ownership(["a", "b", "c"])
    assert sorted(v or 0 for v in spread.values()) == [0, 1, 1], spread  # one ready standby
    # the checkpoint topic as the publisher created it: a partition per shard, compacted, small segments
    configs = await topic_configs(real_kafka.bootstrap, stack.topics["checkpoint"])
    wanted = checkpoint_topic_configs(KafkaConfig(bootstrap_servers=real_kafka.bootstrap))
    assert {name: configs.get(name) for name in wanted} == wanted, configs
    await asyncio.sleep(1.5)
    handovers = []
    for leaving, staying in (("b", ["a", "c"]), ("c", ["a"])):
        t0 = time.monotonic()
        code, took = await fleet.instances[leaving].terminate()
        assert code == 0 and took < 10, fleet.instances[leaving].log_tail()
        await wait_until(lambda: fleet.all_owned(staying, shards), f"{staying} owning both shards",  # noqa: B023
                         SESSION_S * 3, context=fleet.logs)
        handovers.append(round(time.monotonic() - t0, 2))
        await asyncio.sleep(1.0)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    rebalances = await fleet.instances["a"].metric("fillpub_rebalances_total")
    assert rebalances >= 4, rebalances  # a joins; b and c join (together or one by one); b leaves; c leaves
    code, took = await fleet.instances["a"].terminate()
    assert code == 0 and took < 10, fleet.instances["a"].log_tail()
    observe("shards scale 1-3-1", spread_at_3=spread, sigterm_to_all_owned_s=handovers,
            rebalances_seen_by_a=rebalances, fills_in=len(expected), fills_out=len(consumed))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "publisher", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


async def test_reshard_moves_checkpoints_one_instance_to_four_shards_and_back(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """The offline step, under load. One instance without a cluster publishes; a config of 4
    shards is refused at start (the checkpoint topic has 1 partition); `reshard` fences the old
    instance (still running: it exits 3), adds partitions and moves every checkpoint to its shard's
    partition; two instances of the new layout take over; `reshard` back to one shard; a single
    instance again. Every fill exactly once: no source starts afresh at any step."""
    stack = await sharded_stack(tmp_path, real_kafka, topic_prefix, 1, 4)
    cleanup.append(stack)
    stack.sections = {}
    fleet = Fleet(stack, tmp_path, cleanup)
    started_ns = time.time_ns()
    generate(stack, 5)
    alone = fleet.start("alone")
    await alone.wait_ready(60)
    await asyncio.sleep(2)

    stack.sections = {"cluster": {"shards": 4, "session_timeout_s": SESSION_S}}
    config = stack.write_config()
    refused = run_cli("run", "--config", str(config))
    assert refused.returncode == 2 and "cluster.shards" in refused.stderr and "reshard" in refused.stderr, refused

    # the single instance kept every checkpoint in the topic's one partition: those of shard 0 stay
    moving = len(stack.sources) - len(sources_of(stack, [0], 4))
    assert moving > 0
    dry = run_cli("reshard", "--config", str(config), "--dry-run")
    assert dry.returncode == 0 and f"would move {moving} checkpoints" in dry.stdout, dry
    assert alone.alive  # a dry run fences nothing
    moved = run_cli("reshard", "--config", str(config))
    assert moved.returncode == 0 and f"moved {moving} checkpoints" in moved.stdout, moved
    assert await alone._wait(20) == 3, alone.log_tail()  # fenced by the reshard, not by a new instance
    # a session timeout below the brokers' group.min.session.timeout.ms is a config error
    short = run_cli("run", "--config", str(config), env={"FILLPUB_CLUSTER__SESSION_TIMEOUT_S": "1"})
    assert short.returncode == 2 and "cluster.session_timeout_s" in short.stderr, short

    for name in ("x", "y"):
        fleet.start(name)
    await wait_until(lambda: fleet.all_owned(["x", "y"], 4, each_at_least=1), "x and y sharing 4 shards", 60,
                     context=fleet.logs)
    assert not any("no checkpoint in" in fleet.instances[n].logs() for n in ("x", "y")), fleet.logs()
    await asyncio.sleep(2)
    for name in ("x", "y"):
        code, _ = await fleet.instances[name].terminate()
        assert code == 0, fleet.instances[name].log_tail()

    stack.sections = {}
    config = stack.write_config()
    back = run_cli("reshard", "--config", str(config))
    assert back.returncode == 0 and "checkpoint" in back.stdout, back
    status = run_cli("status", "--config", str(config))
    assert status.returncode == 0 and "no checkpoint yet" not in status.stdout, (back.stdout, status.stdout)
    again = fleet.start("again")
    await again.wait_ready(60)
    assert "no checkpoint in" not in again.logs(), (back.stdout, status.stdout, again.log_tail())
    await asyncio.sleep(2)
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    code, _ = await again.terminate()
    assert code == 0
    observe("shards reshard 1-4-1", fills_in=len(expected), fills_out=len(consumed),
            to_four=[line.strip() for line in moved.stdout.splitlines()[1:-1]],
            back_to_one=[line.strip() for line in back.stdout.splitlines()[1:-1]])


async def test_static_member_restarted_within_the_session_timeout_gets_its_shards_back_without_a_rebalance(
        real_kafka: KafkaCluster, topic_prefix: str, tmp_path: Path, cleanup: list[Any]) -> None:
    """Static membership (`cluster.instance_id`, the pod name in the chart): an instance killed and
    started again under the same id within the session timeout gets its shards back, and the
    other instance is not disturbed (no rebalance, its shards kept). Every fill exactly once."""
    shards = 4
    stack = await sharded_stack(tmp_path, real_kafka, topic_prefix, shards, 4)
    cleanup.append(stack)
    stack.sections["cluster"]["session_timeout_s"] = 20  # room for a process restart
    fleet = Fleet(stack, tmp_path, cleanup)
    started_ns = time.time_ns()
    generate(stack, 5)
    a = fleet.start("a", instance_id="pod-a")
    await wait_until(lambda: fleet.all_owned(["a"], shards), "a owning the 4 shards", 60, context=fleet.logs)
    fleet.start("b", instance_id="pod-b")
    await wait_until(lambda: fleet.all_owned(["a", "b"], shards, each_at_least=1), "a and b sharing", 60,
                     context=fleet.logs)
    before = fleet.assigned("b"), await a.metric("fillpub_rebalances_total"), fleet.assigned("a")
    await fleet.instances["b"].kill()
    killed_at = time.monotonic()
    fleet.start("b", instance_id="pod-b")
    await wait_until(lambda: fleet.all_owned(["a", "b"], shards, each_at_least=1), "b back with its shards", 30,
                     context=fleet.logs)
    back_s = time.monotonic() - killed_at
    await asyncio.sleep(2)
    after = fleet.assigned("b"), await a.metric("fillpub_rebalances_total"), fleet.assigned("a")
    assert after == before, (before, after)  # b got the same shards, a saw no rebalance
    expected, consumed = await judge_run(real_kafka, stack, started_ns)
    for name in ("a", "b"):
        code, _ = await fleet.instances[name].terminate()
        assert code == 0, fleet.instances[name].log_tail()
    observe("shards static membership", shards_b=before[0], kill_to_b_serving_again_s=round(back_s, 2),
            rebalances_seen_by_a=after[1], fills_in=len(expected), fills_out=len(consumed))
