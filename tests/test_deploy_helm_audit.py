"""The chart's audit CronJob (`audit.enabled`), linted and rendered by Helm's own engine and
validated against the Kubernetes schemas, like the rest of the chart (tests/test_deploy_helm.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy_helm import KALSHI, KUBE_VERSIONS, NAMESPACE, RELEASE, SECRETS, ZLL, by_kind, ds, one

AUDIT_ON: dict[str, Any] = {
    "config": {"kafka": {"bootstrap_servers": "kafka-0.kafka:9092"}, "sources": [KALSHI, ZLL]},
    "audit": {"enabled": True, "schedule": "*/30 * * * *", "timeZone": "Etc/UTC", "sinceSeconds": 3600,
              "sources": ["zll-main"]},
    "podLabels": {"team": "risk"},
}


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    jobs = [{"id": f"lint:{kv}", "op": "lint", "values": AUDIT_ON, "kube_version": f"v{kv}.0", "namespace": NAMESPACE}
            for kv in KUBE_VERSIONS]
    jobs += [{"id": "render:on", "op": "render", "values": AUDIT_ON, "name": RELEASE, "namespace": NAMESPACE},
             {"id": "render:off", "op": "render", "values": {**AUDIT_ON, "audit": {"enabled": False}},
              "name": RELEASE, "namespace": NAMESPACE},
             {"id": "bad:since", "op": "render", "values": {**AUDIT_ON, "audit": {"sinceSeconds": -1}},
              "name": RELEASE, "namespace": NAMESPACE}]
    return ds.helm(jobs)


def objects(results: dict[str, Any], job: str) -> list[dict[str, Any]]:
    answer = results[job]
    assert answer["ok"], answer
    return [o for path, text in answer["result"].items() if not path.endswith("NOTES.txt") for o in ds.yaml_docs(text)]


def test_audit_cronjob_lints_and_is_valid_kubernetes(results: dict[str, Any]) -> None:
    import kubernetes_validate

    for kv in KUBE_VERSIONS:
        lint = results[f"lint:{kv}"]
        assert lint["ok"] and lint["result"]["errors"] == [], lint
        assert [m for m in lint["result"]["messages"] if m["severity"] >= 2] == []
    objs = objects(results, "render:on")
    for obj in [one(objs, "CronJob"), one(objs, "NetworkPolicy", "-audit")]:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_audit_cronjob_runs_the_audit_and_is_off_by_default(results: dict[str, Any]) -> None:
    objs = objects(results, "render:on")
    cron = one(objs, "CronJob")
    assert cron["spec"]["schedule"] == "*/30 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["audit", "--config", "/etc/fill-publisher/config.yaml", "--source", "zll-main",
                                 "--since", "3600", "--json"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/fill-publisher/config.yaml", SECRETS} <= mounts
    assert pod["restartPolicy"] == "Never"
    # the publisher's Service, PDB and NetworkPolicy never select an audit pod
    labels = job["template"]["metadata"]["labels"]
    assert labels["team"] == "risk" and labels["app.kubernetes.io/component"] == "audit"
    for selector in (one(objs, "Service")["spec"]["selector"],
                     one(objs, "NetworkPolicy", f"{RELEASE}-fill-publisher")["spec"]["podSelector"]["matchLabels"]):
        assert not selector.items() <= labels.items()
    audit_np = one(objs, "NetworkPolicy", "-audit")
    assert audit_np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert "ingress" not in audit_np["spec"]
    main_np = one(objs, "NetworkPolicy", f"{RELEASE}-fill-publisher")
    assert audit_np["spec"]["egress"] == main_np["spec"]["egress"]
    assert by_kind(objects(results, "render:off"), "CronJob") == []
    defaults = ds.yaml_docs((ds.CHART / "values.yaml").read_text())[0]
    assert defaults["audit"]["enabled"] is False


def test_bad_audit_values_are_refused(results: dict[str, Any]) -> None:
    answer = results["bad:since"]
    assert not answer["ok"] and "sinceSeconds" in answer["error"]
