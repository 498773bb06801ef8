"""The chart with several replicas sharing the sources (`replicaCount`, `cluster`, `strategy`,
`podAntiAffinity`, `topologySpreadConstraints`), rendered and linted by Helm's own engine and
validated against the Kubernetes schemas, like the rest of the chart (tests/test_deploy_helm.py,
whose `sharded` scenario also runs `check-config` on the config these values render)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy_helm import KUBE_VERSIONS, MINIMAL, NAMESPACE, RELEASE, SHARDED, ds, one

SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
OWN_SELECTOR = {**SPREAD, "labelSelector": {"matchLabels": {"team": "risk"}}}

VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "sharded": SHARDED,
    "hard": {**SHARDED, "podAntiAffinity": "hard", "podAntiAffinityTopologyKey": "topology.kubernetes.io/zone"},
    "own_affinity": {**SHARDED, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["trading"]}]}]}}},
                     "topologySpreadConstraints": [OWN_SELECTOR]},
    "no_anti_affinity": {**SHARDED, "podAntiAffinity": ""},
    "one_replica_of_four_shards": {**MINIMAL, "cluster": {"shards": 4}},
    "recreate_of_four_shards": {**SHARDED, "strategy": {"type": "Recreate"}},
    "scaled_to_zero": {**MINIMAL, "replicaCount": 0},
    "standbys": {**MINIMAL, "replicaCount": 6, "cluster": {"shards": 4}},
}


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    jobs = [{"id": f"render:{n}", "op": "render", "values": v, "name": RELEASE, "namespace": NAMESPACE}
            for n, v in VARIANTS.items()]
    jobs += [{"id": f"lint:{n}:{kv}", "op": "lint", "values": v, "kube_version": f"v{kv}.0", "namespace": NAMESPACE}
             for n, v in VARIANTS.items() for kv in KUBE_VERSIONS]
    return ds.helm(jobs)


def objects(results: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    answer = results[f"render:{variant}"]
    assert answer["ok"], answer
    return [o for path, text in answer["result"].items() if not path.endswith("NOTES.txt") for o in ds.yaml_docs(text)]


def deployment(results: dict[str, Any], variant: str) -> dict[str, Any]:
    return one(objects(results, variant), "Deployment")


def notes(results: dict[str, Any], variant: str) -> str:
    return results[f"render:{variant}"]["result"]["fill-publisher/templates/NOTES.txt"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lints_clean_and_is_valid_kubernetes(results: dict[str, Any], variant: str) -> None:
    import kubernetes_validate

    for kv in KUBE_VERSIONS:
        lint = results[f"lint:{variant}:{kv}"]
        assert lint["ok"] and lint["result"]["errors"] == [], lint
        assert [m for m in lint["result"]["messages"] if m["severity"] >= 2] == []
        for obj in objects(results, variant):
            kubernetes_validate.validate(obj, kv, strict=True)


def test_static_membership_passes_the_pod_name_as_instance_id(results: dict[str, Any]) -> None:
    (container,) = deployment(results, "sharded")["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [
        {"name": "FILLPUB_CLUSTER__INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *SHARDED["env"],
    ]
    # without static membership the pod has no instance id (dynamic members leave the group on SIGTERM)
    for variant in ("minimal", "one_replica_of_four_shards"):
        (container,) = deployment(results, variant)["spec"]["template"]["spec"]["containers"]
        assert "env" not in container, variant


def test_replicas_spread_over_nodes_by_default(results: dict[str, Any]) -> None:
    dep = deployment(results, "sharded")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (preferred,) = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    # a constraint without labelSelector selects this release's pods
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread == {**SPREAD, "labelSelector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}


def test_hard_anti_affinity_requires_other_nodes(results: dict[str, Any]) -> None:
    dep = deployment(results, "hard")
    (required,) = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"topologyKey": "topology.kubernetes.io/zone",
                        "labelSelector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}


def test_affinity_replaces_the_preset_and_own_selectors_stay(results: dict[str, Any]) -> None:
    pod = deployment(results, "own_affinity")["spec"]["template"]["spec"]
    assert pod["affinity"] == VARIANTS["own_affinity"]["affinity"]
    assert pod["topologySpreadConstraints"] == [OWN_SELECTOR]
    assert "affinity" not in deployment(results, "no_anti_affinity")["spec"]["template"]["spec"]


def test_one_replica_has_nothing_to_spread(results: dict[str, Any]) -> None:
    for variant in ("minimal", "one_replica_of_four_shards"):
        pod = deployment(results, variant)["spec"]["template"]["spec"]
        assert "affinity" not in pod and "topologySpreadConstraints" not in pod, variant


def test_update_strategy_follows_the_shards(results: dict[str, Any]) -> None:
    # with shards a lone replica still rolls (its successor takes the shards over safely)
    assert deployment(results, "one_replica_of_four_shards")["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # and Recreate may be chosen (no overlap at all, a pause of every shard instead)
    assert deployment(results, "recreate_of_four_shards")["spec"]["strategy"] == {"type": "Recreate"}
    # scaled to zero (every pod stopped, e.g. for `fill-publisher reshard`) is allowed with one shard
    assert deployment(results, "scaled_to_zero")["spec"]["replicas"] == 0


def test_disruption_budget_selects_the_replicas(results: dict[str, Any]) -> None:
    objs = objects(results, "sharded")
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1,
                           "selector": {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]}}


def test_notes_say_how_the_shards_are_shared(results: dict[str, Any]) -> None:
    text = notes(results, "sharded")
    assert 'Shards:  4, shared by 3 replicas through consumer group "fill-publisher-eu" (static membership: pod names).' in text
    assert "fill-publisher.checkpoints needs at least 4 partitions" in text
    assert "fill-publisher reshard" in text
    assert "2 more replicas than shards wait as standbys" in notes(results, "standbys")
    assert 'consumer group "fill-publisher";' in notes(results, "standbys")  # the default: the prefix
    assert "Shards:  1, so exactly one replica" in notes(results, "minimal")
