"""The chart conventions operators expect (as in the prometheus-community charts), rendered with
Helm's own engine: every new value changes what it should, lint stays clean, the objects stay
valid for Kubernetes, two releases' alert rules never fire the same alert twice (promtool), the
`helm test` hook asks /readyz, and the chart README lists every value.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
import deploy_support as ds
from test_deploy_helm import KALSHI, KUBE_VERSIONS, MINIMAL, NAMESPACE, RELEASE, by_kind, one

CONVENTIONS: dict[str, Any] = {
    "config": {"kafka": {"bootstrap_servers": "kafka-0.kafka:9092"}, "sources": [KALSHI]},
    "commonLabels": {"team": "risk", "cost-center": "trading"},
    # OpenShift's restricted SCC picks the ids: null removes them from the defaults
    "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
    "securityContext": {"capabilities": {"drop": ["ALL"], "add": []}},
    "envFrom": [{"configMapRef": {"name": "fp-overrides"}}],
    "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "serviceMonitor": {
        "enabled": True,
        "namespace": "monitoring",
        "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}],
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "process_.*"}],
    },
    "prometheusRule": {"enabled": True, "job": "fp-eu", "runbookBaseUrl": "https://git.example.com/fp/blob/main"},
    "networkPolicy": {"metrics": {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
                      "kafka": {"ports": [9092, {"port": 9093, "endPort": 9095}]}},
}

BAD = {
    "relative_runbook_base": ({**MINIMAL, "prometheusRule": {"runbookBaseUrl": "docs"}}, "runbookBaseUrl"),
    "volume_without_name": ({**MINIMAL, "extraVolumes": [{"emptyDir": {}}]}, "extraVolumes"),
    "bad_kafka_port": ({**MINIMAL, "networkPolicy": {"kafka": {"ports": [{"endPort": 9098}]}}}, "ports"),
}


def two_release_rules_jobs() -> list[dict[str, Any]]:
    values = {**MINIMAL, "prometheusRule": {"enabled": True}}
    return [{"id": f"rules:{name}", "op": "render", "values": values, "name": name, "namespace": NAMESPACE}
            for name in ("fp-a", "fp-b")]


@pytest.fixture(scope="module")
def helm_results() -> dict[str, Any]:
    jobs: list[dict[str, Any]] = [
        {"id": "render:conventions", "op": "render", "values": CONVENTIONS, "name": RELEASE, "namespace": NAMESPACE},
        {"id": "render:minimal", "op": "render", "values": MINIMAL, "name": RELEASE, "namespace": NAMESPACE},
        *two_release_rules_jobs(),
    ]
    jobs += [{"id": f"lint:conventions:{kv}", "op": "lint", "values": CONVENTIONS, "kube_version": f"v{kv}.0",
              "namespace": NAMESPACE} for kv in KUBE_VERSIONS]
    jobs += [{"id": f"bad:{n}", "op": "render", "values": v, "name": RELEASE, "namespace": NAMESPACE}
             for n, (v, _) in BAD.items()]
    return ds.helm(jobs)


def objects(helm_results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    answer = helm_results[f"render:{scenario}"]
    assert answer["ok"], answer
    return [o for path, text in answer["result"].items() if not path.endswith("NOTES.txt")
            for o in ds.yaml_docs(text)]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lints_clean_and_renders_valid_objects(helm_results: dict[str, Any], kube_version: str) -> None:
    import kubernetes_validate

    result = helm_results[f"lint:conventions:{kube_version}"]["result"]
    assert result["errors"] == [] and [m for m in result["messages"] if m["severity"] >= 2] == []
    for obj in objects(helm_results, "conventions"):
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_common_labels_on_every_object(helm_results: dict[str, Any]) -> None:
    objs = objects(helm_results, "conventions")
    assert len(objs) >= 8
    for obj in objs:
        assert obj["metadata"]["labels"].items() >= {"team": "risk", "cost-center": "trading"}.items(), obj["kind"]
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["team"] == "risk"


def test_security_contexts_are_overridable(helm_results: dict[str, Any]) -> None:
    pod = pod_spec(objects(helm_results, "conventions"))
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": []}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    default = pod_spec(objects(helm_results, "minimal"))
    assert default["securityContext"]["runAsUser"] == 10001 and default["securityContext"]["fsGroup"] == 10001


def test_env_from_and_extra_volumes(helm_results: dict[str, Any]) -> None:
    pod = pod_spec(objects(helm_results, "conventions"))
    (container,) = pod["containers"]
    assert container["envFrom"] == CONVENTIONS["envFrom"]
    assert {"name": "ca-bundle", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    assert {"name": "ca-bundle", "mountPath": "/etc/ssl/corp", "readOnly": True} in container["volumeMounts"]
    # the chart's own mounts stay
    assert {m["name"] for m in container["volumeMounts"]} >= {"config", "secrets", "tmp", "ca-bundle"}
    minimal = pod_spec(objects(helm_results, "minimal"))["containers"][0]
    assert "envFrom" not in minimal


def test_servicemonitor_namespace_and_relabelings(helm_results: dict[str, Any]) -> None:
    objs = objects(helm_results, "conventions")
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    # the chart's job first (what the rules select), then the operator's own
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "fp-eu"},
        *CONVENTIONS["serviceMonitor"]["relabelings"],
    ]
    assert endpoint["metricRelabelings"] == CONVENTIONS["serviceMonitor"]["metricRelabelings"]
    rules = one(objs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    exprs = " ".join(r["expr"] for r in rules)
    assert exprs.count('job="fp-eu", namespace="trading"') >= len(rules) - 1
    assert 'job="fill-publisher"' not in exprs
    assert all(r["annotations"]["runbook_url"].startswith("https://git.example.com/fp/blob/main/docs/runbooks.md#")
               for r in rules)


def test_every_alert_selects_its_release(helm_results: dict[str, Any]) -> None:
    """No selector of a scoped rule is left unscoped: each metric name is followed by the release's
    job and namespace (kube-state-metrics': its namespace and pods)."""
    (rules_obj,) = by_kind(objects(helm_results, "conventions"), "PrometheusRule")
    for rule in rules_obj["spec"]["groups"][0]["rules"]:
        for name, selector in re.findall(r"\b((?:fillpub_|up\b|kube_)[a-z_]*)(\{[^}]*\})?", rule["expr"]):
            if name.startswith("kube_"):
                assert 'namespace="trading", pod=~"fp-fill-publisher-' in selector, rule["alert"]
            else:
                assert 'job="fp-eu", namespace="trading"' in selector, (rule["alert"], name)


def test_network_policy_kafka_ports(helm_results: dict[str, Any]) -> None:
    def kafka_rule(scenario: str) -> list[dict[str, Any]]:
        egress = one(objects(helm_results, scenario), "NetworkPolicy")["spec"]["egress"]
        return egress[1]["ports"]

    # the default does not block the usual Kafka ports
    assert kafka_rule("minimal") == [{"port": 9092, "endPort": 9098, "protocol": "TCP"}]
    assert kafka_rule("conventions") == [{"port": 9092, "protocol": "TCP"},
                                         {"port": 9093, "endPort": 9095, "protocol": "TCP"}]
    ingress_from = one(objects(helm_results, "conventions"), "NetworkPolicy")["spec"]["ingress"][0]["from"]
    # with scrapers restricted, the release's test pod may still ask /readyz
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "test"}}} in ingress_from


def test_helm_test_hook_asks_readyz_and_is_not_behind_the_service(helm_results: dict[str, Any]) -> None:
    objs = objects(helm_results, "conventions")
    (pod,) = [o for o in by_kind(objs, "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    svc = one(objs, "Service")
    assert not svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    script = container["args"][0]
    assert f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/readyz" in script
    compile(script, "helm-test", "exec")  # the check is valid Python for the image's interpreter
    assert container["image"] == pod_spec(objs)["containers"][0]["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("case", list(BAD))
def test_bad_convention_values_are_refused(helm_results: dict[str, Any], case: str) -> None:
    answer = helm_results[f"bad:{case}"]
    assert not answer["ok"], f"{case} rendered but must be refused"
    assert BAD[case][1] in answer["error"]


def _promtool() -> str:
    path = ds.tool("promtool")
    if path is None:
        pytest.fail("promtool missing: apt-get install -y prometheus")
    return path


def test_two_releases_never_fire_an_alert_twice(helm_results: dict[str, Any], tmp_path: Path) -> None:
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for name in ("fp-a", "fp-b"):
        answer = helm_results[f"rules:{name}"]
        assert answer["ok"], answer
        (rule,) = [o for path, text in answer["result"].items() if path.endswith("prometheusrule.yaml")
                   for o in ds.yaml_docs(text)]
        (rendered / f"{name}.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests_file = tmp_path / "alerts-two-releases.test.yml"
    shutil.copy(ds.ALERT_TESTS_FILE.parent / "alerts-two-releases.test.yml", tests_file)
    proc = ds.run([_promtool(), "test", "rules", str(tests_file)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the same inputs against two unscoped copies (the file as compose loads it) do double-fire:
    # the test above can tell the difference
    for name in ("fp-a", "fp-b"):
        text = ds.ALERTS_FILE.read_text().replace('job="fill-publisher"', 'job=~"fp-.*"')
        (rendered / f"{name}.yml").write_text(text.replace('container="fill-publisher"', 'container=~".+"'))
    proc = ds.run([_promtool(), "test", "rules", str(tests_file)])
    assert proc.returncode != 0


def _value_keys(values: dict[str, Any]) -> set[str]:
    """Top-level keys, and the second level where it holds chart settings (not Kubernetes objects)."""
    opaque = {"config", "podSecurityContext", "securityContext", "resources", "nodeSelector", "affinity",
              "podAnnotations", "podLabels", "commonLabels"}
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in opaque:
            keys.update(f"{key}.{sub}" for sub in value)
        else:
            keys.add(key)
    return keys


def test_chart_readme_lists_every_value() -> None:
    readme = (ds.CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    values = yaml.safe_load((ds.CHART / "values.yaml").read_text())
    missing = {k for k in _value_keys(values) if k not in documented
               and not any(d.startswith(f"{k}.") for d in documented)}
    assert not missing, f"chart README lacks rows for {sorted(missing)}"
    stale = {d for d in documented if d.split(".")[0] not in values}
    assert not stale, f"chart README documents values that do not exist: {sorted(stale)}"


def test_chart_app_version_is_the_package_version() -> None:
    """pyproject.toml writes the version; the chart's appVersion (the default image tag) must follow
    it, or a release runs an image of another version than the chart says."""
    from importlib.metadata import version

    chart = yaml.safe_load((ds.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("fill-publisher")
