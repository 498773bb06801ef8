"""Shard layout: which shard a source belongs to, and what a shard is in Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from publisher.cli import main
from publisher.config import ConfigError, load_settings
from publisher.shards import layout, shard_of

#: murmur2 of UTF-8 strings as Apache Kafka's own unit tests pin them (Java's signed int32):
#: a source's shard is Kafka's default partition for a record keyed by its name
KAFKA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize("name", sorted(KAFKA_MURMUR2))
@pytest.mark.parametrize("shards", [1, 2, 3, 8, 64, 1024])
def test_shard_of_is_kafkas_partition_of_the_name(name: str, shards: int) -> None:
    assert shard_of(name, shards) == (KAFKA_MURMUR2[name] & 0x7FFFFFFF) % shards


def config(tmp_path: Path, sources: list[dict[str, Any]], **cluster: Any) -> Path:
    key = tmp_path / "zll.key"
    key.write_text("c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==\n")
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "kafka:9092", "transactional_id_prefix": "fp"},
        "sources": [{"venue": "zll", "base_url": "https://zll.test", "api_key_file": str(key),
                     "subaccount_index": i, **s} for i, s in enumerate(sources)],
    }
    if cluster:
        doc["cluster"] = cluster
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_one_shard_is_a_single_instance_as_before_sharding(tmp_path: Path) -> None:
    plan = layout(load_settings(config(tmp_path, [{"name": "a"}, {"name": "b"}]), {}).config)
    assert not plan.grouped and plan.group_id is None and len(plan.shards) == 1
    (only,) = plan.shards
    assert only.transactional_id == "fp" and only.checkpoint_partition is None
    assert [s.name for s in only.sources] == ["a", "b"]


def test_shards_have_their_own_transactional_id_and_checkpoint_partition(tmp_path: Path) -> None:
    names = ["a", "abc", "foobar", "21", "pinned"]
    path = config(tmp_path, [{"name": n} for n in names[:-1]] + [{"name": "pinned", "shard": 7}], shards=8)
    plan = layout(load_settings(path, {}).config)
    assert plan.grouped and plan.group_id == "fp"
    assert [(s.number, s.transactional_id, s.checkpoint_partition) for s in plan.shards] == \
        [(k, f"fp-{k}", k) for k in range(8)]
    where = {s.name: shard.number for shard in plan.shards for s in shard.sources}
    assert where == {**{n: shard_of(n, 8) for n in names[:-1]}, "pinned": 7}
    assert plan.shard_of_source("pinned") == 7 and plan.shard(8) is None and plan.shard(7) is plan.shards[7]


def test_group_id_and_cluster_settings_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = config(tmp_path, [{"name": "a"}], shards=4, group_id="risk-fills")
    settings = load_settings(path, {"FILLPUB_CLUSTER__SHARDS": "6", "FILLPUB_CLUSTER__INSTANCE_ID": "pod-0",
                                    "FILLPUB_CLUSTER__SESSION_TIMEOUT_S": "20"})
    cluster = settings.config.cluster
    assert (cluster.shards, cluster.group_id, cluster.instance_id, cluster.session_timeout_s) == \
        (6, "risk-fills", "pod-0", 20.0)
    assert layout(settings.config).group_id == "risk-fills"


@pytest.mark.parametrize(("sources", "cluster", "field", "problem"), [
    ([{"name": "a", "shard": 4}], {"shards": 4}, "sources[a].shard", "4 is not a shard: cluster.shards is 4"),
    ([{"name": "a", "shard": 1}], {}, "sources[a].shard", "cluster.shards is 1"),
    ([{"name": "a"}], {"shards": 0}, "cluster.shards", ">= 1"),
    ([{"name": "a"}], {"shards": 2000}, "cluster.shards", "<= 1024"),
    ([{"name": "a"}], {"shards": 2, "session_timeout_s": 0.5}, "cluster.session_timeout_s", ">= 1"),
    ([{"name": "a"}], {"replicas": 2}, "cluster.replicas", "unknown setting"),
])
def test_bad_cluster_settings_name_the_field(tmp_path: Path, sources: list[dict[str, Any]], cluster: dict[str, Any],
                                             field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(config(tmp_path, sources, **cluster), {})
    assert raised.value.field == field and problem in raised.value.problem, raised.value


def test_check_config_names_the_cluster_and_each_sources_shard(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, [{"name": "abc"}, {"name": "pinned", "shard": 2}], shards=3, instance_id="pod-1")
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "cluster: 3 shards, consumer group fp, static member pod-1" in out
    assert f"abc: venue=zll shard={shard_of('abc', 3)} " in out and "pinned: venue=zll shard=2 " in out
