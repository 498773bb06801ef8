"""The Helm chart, checked offline with real tools.

- lint (strict) and render with Helm's own Go engine (helm-python-sdk, in a child process:
  tests/deploy/helm_tool.py), for value sets that switch every toggle on and off;
- every rendered object valid against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict) of two Kubernetes versions; ServiceMonitor and PrometheusRule against strict JSON
  schemas of the prometheus-operator CRDs (cloudcoil-models-prometheus-operator);
- the PrometheusRule carries exactly the rule groups of files/alerts.yml;
- the config the chart renders passes `fill-publisher check-config`, with the pod's secret
  mounts emulated in a temporary directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
import deploy_support as ds

KUBE_VERSIONS = ("1.29", "1.33")
NAMESPACE = "trading"
RELEASE = "fp"
SECRETS = "/etc/fill-publisher/secrets"

KALSHI = {
    "name": "kalshi-main",
    "venue": "kalshi",
    "base_url": "https://external-api.kalshi.com/trade-api/v2",
    "api_key_id": "a952bcbe-ec3b-4b5b-b8f9-11dae589608c",
    "private_key_file": f"{SECRETS}/kalshi-private-key.pem",
    "subaccount": 2,
    "poll_interval_s": 1.0,
}
ZLL = {
    "name": "zll-main",
    "venue": "zll",
    "base_url": "https://staging.zerolatencylabs.com",
    "api_key_file": f"{SECRETS}/zll-api-key",
    "subaccount_index": 0,
    "portfolio_index": 1,
}

MINIMAL: dict[str, Any] = {
    "config": {"kafka": {"bootstrap_servers": "kafka-0.kafka:9092"}, "sources": [KALSHI]},
}

# Every toggle on, and the optional knobs used.
ALL_ON: dict[str, Any] = {
    "image": {"repository": "registry.example.com/fill-publisher", "digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "regcred"}],
    "config": {
        "kafka": {
            "bootstrap_servers": "kafka-0.kafka:9093,kafka-1.kafka:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "fill-publisher",
            "sasl_password_file": f"{SECRETS}/sasl-password",
            "ssl_cafile": f"{SECRETS}/ca.crt",
            "transactional_id_prefix": "fill-publisher-eu",
            "create_topics": False,
            "max_pending_fills": 50000,
        },
        "http": {"host": "0.0.0.0", "port": 9200},
        "sources": [KALSHI, ZLL],
    },
    "env": [{"name": "FILLPUB_KAFKA__CLIENT_ID", "value": "fill-publisher-eu"}],
    "serviceAccount": {"create": True, "name": "fill-publisher-sa", "annotations": {"owner": "risk"}},
    "podAnnotations": {"example.com/team": "risk"},
    "podLabels": {"team": "risk"},
    "priorityClassName": "high-priority",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "trading", "effect": "NoSchedule"}],
    "service": {"port": 9200, "annotations": {"example.com/x": "y"}},
    "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "runbookBaseUrl": "https://git.example.com/trading/fill-publisher/blob/main",
    },
    "grafanaDashboard": {"enabled": True},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "networkPolicy": {
        "enabled": True,
        "metrics": {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "kafka": {
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}],
            "ports": [9093],
        },
        "venues": {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [443]},
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": [{"port": 8443, "protocol": "TCP"}]}],
    },
}

# Every toggle off; secrets from the environment instead of a mounted Secret.
ALL_OFF: dict[str, Any] = {
    "config": {
        "kafka": {
            "bootstrap_servers": "kafka:9092",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "fp",
            "sasl_password_env": "KAFKA_PASSWORD",
        },
        "sources": [
            {k: v for k, v in KALSHI.items() if k != "private_key_file"} | {"private_key_env": "KALSHI_PEM"},
            {k: v for k, v in ZLL.items() if k != "api_key_file"} | {"api_key_env": "ZLL_KEY"},
        ],
    },
    "secrets": {"existingSecret": "", "mountPath": SECRETS},
    "env": [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": "fp-env-secrets", "key": n.lower()}}}
        for n in ("KAFKA_PASSWORD", "KALSHI_PEM", "ZLL_KEY")
    ],
    "serviceAccount": {"create": False},
    "serviceMonitor": {"enabled": False},
    "prometheusRule": {"enabled": False},
    "grafanaDashboard": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "networkPolicy": {"enabled": False},
}

# Several replicas sharing the sources: static membership, spread over zones, a custom rollout.
SHARDED: dict[str, Any] = {
    "config": {"kafka": {"bootstrap_servers": "kafka-0.kafka:9092"}, "sources": [KALSHI, ZLL]},
    "replicaCount": 3,
    "cluster": {"shards": 4, "groupId": "fill-publisher-eu", "sessionTimeoutSeconds": 20,
                "staticMembership": True},
    "strategy": {"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 1}},
    "env": [{"name": "FILLPUB_KAFKA__CLIENT_ID", "value": "fill-publisher-eu"}],
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
    ],
}

# The example values the README points users at must work as they are.
EXAMPLE_VALUES_FILE = ds.REPO / "docs" / "helm-values.example.yaml"
EXAMPLE = yaml.safe_load(EXAMPLE_VALUES_FILE.read_text())

SCENARIOS = {"minimal": MINIMAL, "all_on": ALL_ON, "all_off": ALL_OFF, "sharded": SHARDED, "docs_example": EXAMPLE}
OPTIONAL_KINDS = {  # kind -> the toggle that renders it
    "ServiceMonitor": ("serviceMonitor", "enabled"),
    "PrometheusRule": ("prometheusRule", "enabled"),
    "PodDisruptionBudget": ("podDisruptionBudget", "enabled"),
    "NetworkPolicy": ("networkPolicy", "enabled"),
    "ServiceAccount": ("serviceAccount", "create"),
}

BAD_VALUES = {
    "no_bootstrap": ({"config": {"kafka": {}, "sources": [KALSHI]}}, "bootstrap_servers"),
    "no_sources": ({"config": {"kafka": {"bootstrap_servers": "k:9092"}, "sources": []}}, "config.sources"),
    "duplicate_name": (
        {"config": {"kafka": {"bootstrap_servers": "k:9092"}, "sources": [KALSHI, KALSHI]}},
        "used twice",
    ),
    "inline_secret": (
        {"config": {"kafka": {"bootstrap_servers": "k:9092"},
                    "sources": [{**KALSHI, "private_key": "-----BEGIN PRIVATE KEY-----"}]}},
        "private_key",
    ),
    "inline_sasl_password": (
        {"config": {"kafka": {"bootstrap_servers": "k:9092", "sasl_password": "hunter2"}, "sources": [KALSHI]}},
        "sasl_password",
    ),
    "bad_source_name": ({"config": {"kafka": {"bootstrap_servers": "k:9092"}, "sources": [{**KALSHI, "name": "Kalshi Main"}]}}, "name"),
    "unknown_venue": ({"config": {"kafka": {"bootstrap_servers": "k:9092"}, "sources": [{**KALSHI, "venue": "binance"}]}}, "venue"),
    "two_replicas": ({**MINIMAL, "replicaCount": 2}, "replicaCount is 2 but cluster.shards is 1"),
    "rolling_update_of_one_shard": ({**MINIMAL, "strategy": {"type": "RollingUpdate"}}, "strategy.type RollingUpdate"),
    "static_membership_of_one_shard": ({**MINIMAL, "cluster": {"staticMembership": True}}, "cluster.staticMembership"),
    "group_of_one_shard": ({**MINIMAL, "cluster": {"groupId": "fp"}}, "cluster.groupId"),
    "config_cluster": (
        {**MINIMAL, "config": {**MINIMAL["config"], "cluster": {"shards": 4}}},
        "config.cluster: the chart writes the config's cluster section",
    ),
    "cluster_env_override": (
        {**SHARDED, "env": [{"name": "FILLPUB_CLUSTER__SHARDS", "value": "8"}]}, "env: FILLPUB_CLUSTER__SHARDS",
    ),
    "no_shards": ({**MINIMAL, "cluster": {"shards": 0}}, "shards"),
    "session_timeout_below_6s": ({**SHARDED, "cluster": {"shards": 4, "sessionTimeoutSeconds": 5}},
                                 "sessionTimeoutSeconds"),
    "rollout_that_cannot_move": (
        {**SHARDED, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}},
        "maxSurge and maxUnavailable cannot both be 0",
    ),
    "unknown_anti_affinity": ({**SHARDED, "podAntiAffinity": "always"}, "podAntiAffinity"),
    "spread_without_topology_key": ({**SHARDED, "topologySpreadConstraints": [{"maxSkew": 1}]},
                                    "topologySpreadConstraints"),
}


def _lint_jobs() -> list[dict[str, Any]]:
    jobs = [{"id": "lint:defaults", "op": "lint", "values": {}, "kube_version": "v1.33.0"}]
    for name, values in SCENARIOS.items():
        for kv in KUBE_VERSIONS:
            jobs.append({"id": f"lint:{name}:{kv}", "op": "lint", "values": values,
                         "kube_version": f"v{kv}.0", "namespace": NAMESPACE})
    return jobs


@pytest.fixture(scope="module")
def helm_results() -> dict[str, Any]:
    jobs = _lint_jobs()
    jobs += [{"id": f"render:{n}", "op": "render", "values": v, "name": RELEASE, "namespace": NAMESPACE}
             for n, v in SCENARIOS.items()]
    jobs.append({"id": "render:defaults", "op": "render", "values": {}, "name": RELEASE, "namespace": NAMESPACE})
    jobs += [{"id": f"bad:{n}", "op": "render", "values": v, "name": RELEASE, "namespace": NAMESPACE}
             for n, (v, _) in BAD_VALUES.items()]
    return ds.helm(jobs)


def rendered(helm_results: dict[str, Any], scenario: str) -> dict[str, list[dict[str, Any]]]:
    """{template path: [objects]} of a scenario (disabled templates render to nothing)."""
    answer = helm_results[f"render:{scenario}"]
    assert answer["ok"], answer
    out = {}
    for path, text in answer["result"].items():
        if path.endswith("NOTES.txt"):
            continue
        out[path] = ds.yaml_docs(text)
    return out


def objects(helm_results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    return [o for objs in rendered(helm_results, scenario).values() for o in objs]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def rendered_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one([o for o in objs if not o["metadata"]["name"].endswith("-dashboard")], "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


# ------------------------------------------------------------------------------- lint
@pytest.mark.parametrize("job", [j["id"] for j in _lint_jobs()])
def test_chart_lints_clean(helm_results: dict[str, Any], job: str) -> None:
    answer = helm_results[job]
    assert answer["ok"], answer
    result = answer["result"]
    assert result["errors"] == [], result
    # severities: 1 info, 2 warning, 3 error. Only "icon is recommended" (info) is tolerated.
    serious = [m for m in result["messages"] if m["severity"] >= 2]
    assert serious == [], serious


# ------------------------------------------------------------------------------- render + schemas
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_objects_valid_for_kubernetes(helm_results: dict[str, Any], scenario: str) -> None:
    import kubernetes_validate

    objs = objects(helm_results, scenario)
    core = [o for o in objs if o["apiVersion"] != "monitoring.coreos.com/v1"]
    assert {o["kind"] for o in core} >= {"ConfigMap", "Deployment", "Service"}
    for version in KUBE_VERSIONS:
        for obj in core:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {exc}")


def _strict(schema: Any) -> Any:
    """A JSON schema that rejects unknown fields: the CRD's structural schema is strict the same
    way on a real API server (unknown fields are pruned/rejected with kubectl's strict validation)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, Any]:
    import jsonschema
    from cloudcoil.models.prometheus_operator import v1

    validators = {}
    for kind, model in (("ServiceMonitor", v1.ServiceMonitor), ("PrometheusRule", v1.PrometheusRule)):
        schema = _strict(model.model_json_schema(by_alias=True))
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
        validators[kind] = jsonschema.Draft202012Validator(schema)
    return validators


def test_crd_validators_are_strict(crd_validators: dict[str, Any]) -> None:
    bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
           "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "15s"}]}}
    assert list(crd_validators["ServiceMonitor"].iter_errors(bad)), "typo in a field must be rejected"
    bad_rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
                "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "severity": "x"}]}]}}
    assert list(crd_validators["PrometheusRule"].iter_errors(bad_rule))


def test_custom_resources_valid_against_crd_schemas(helm_results: dict[str, Any], crd_validators: dict[str, Any]) -> None:
    checked = 0
    for scenario in SCENARIOS:
        for obj in objects(helm_results, scenario):
            if obj["apiVersion"] != "monitoring.coreos.com/v1":
                continue
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in crd_validators[obj["kind"]].iter_errors(obj)]
            assert errors == [], f"{scenario} {obj['kind']}: {errors}"
            checked += 1
    assert checked == 4  # ServiceMonitor + PrometheusRule of all_on and of docs_example


# ------------------------------------------------------------------------------- toggles
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_toggles_switch_objects(helm_results: dict[str, Any], scenario: str) -> None:
    values = SCENARIOS[scenario]
    defaults = _chart_defaults()
    objs = objects(helm_results, scenario)
    kinds = [o["kind"] for o in objs]
    for kind, (section, key) in OPTIONAL_KINDS.items():
        enabled = values.get(section, {}).get(key, defaults[section][key])
        assert kinds.count(kind) == (1 if enabled else 0), (scenario, kind)
    dash_enabled = values.get("grafanaDashboard", {}).get("enabled", defaults["grafanaDashboard"]["enabled"])
    dashboards = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert len(dashboards) == (1 if dash_enabled else 0)
    for kind in ("Deployment", "Service"):
        assert kinds.count(kind) == 1


def _chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((ds.CHART / "values.yaml").read_text())


def test_default_values_refuse_to_render_without_kafka_and_sources(helm_results: dict[str, Any]) -> None:
    answer = helm_results["render:defaults"]
    assert not answer["ok"]
    assert "config.kafka.bootstrap_servers is required" in answer["error"]


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused_naming_the_field(helm_results: dict[str, Any], case: str) -> None:
    answer = helm_results[f"bad:{case}"]
    assert not answer["ok"], f"{case} rendered but must be refused"
    assert BAD_VALUES[case][1] in answer["error"]


# ------------------------------------------------------------------------------- object contents
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_standard_labels_on_every_object(helm_results: dict[str, Any], scenario: str) -> None:
    for obj in objects(helm_results, scenario):
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"):
            assert key in labels, (obj["kind"], key)
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert obj["metadata"]["namespace"] == NAMESPACE


def _shards(values: dict[str, Any]) -> int:
    return int(values.get("cluster", {}).get("shards", _chart_defaults()["cluster"]["shards"]))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_deployment_is_restricted_and_a_singleton_with_one_shard(helm_results: dict[str, Any], scenario: str) -> None:
    objs = objects(helm_results, scenario)
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    values = SCENARIOS[scenario]
    if _shards(values) == 1:
        # a second pod, even for the moments of a rolling update, would fence the first
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
    else:
        assert spec["replicas"] == values["replicaCount"]
        rolling = values.get("strategy", {}).get("rollingUpdate", _chart_defaults()["strategy"]["rollingUpdate"])
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["args"] == ["run", "--config", "/etc/fill-publisher/config.yaml"]
    assert "limits" in container["resources"] and "requests" in container["resources"]
    # probes on the contract's endpoints, on the port the config serves
    cfg = rendered_config(objs)
    port = (cfg.get("http") or {}).get("port", 9108)
    (cport,) = container["ports"]
    assert cport["containerPort"] == port and cport["name"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # config mounted where args point, from the ConfigMap the chart renders
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/fill-publisher/config.yaml"]["subPath"] == "config.yaml"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(
        [o for o in objs if not o["metadata"]["name"].endswith("-dashboard")], "ConfigMap")["metadata"]["name"]
    # a config change rolls the pod
    assert len(spec["template"]["metadata"]["annotations"]["checksum/config"]) == 64


def test_secrets_come_from_the_existing_secret_as_files(helm_results: dict[str, Any]) -> None:
    objs = objects(helm_results, "all_on")
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    secret_vol = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert secret_vol["secret"]["secretName"] == "fill-publisher-secrets"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "secrets")
    assert mount["mountPath"] == SECRETS and mount["readOnly"] is True
    # no Secret object is created by the chart, and no secret value is in the ConfigMap
    assert by_kind(objs, "Secret") == []
    # with existingSecret empty (all_off) nothing is mounted
    pod_off = one(objects(helm_results, "all_off"), "Deployment")["spec"]["template"]["spec"]
    assert all(v["name"] != "secrets" for v in pod_off["volumes"])


def test_service_servicemonitor_and_networkpolicy_select_the_pod(helm_results: dict[str, Any]) -> None:
    objs = objects(helm_results, "all_on")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = one(objs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == "http"
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc_port["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # the alert rules select this release's job: the ServiceMonitor must set exactly that job
    job_relabel = sm["spec"]["endpoints"][0]["relabelings"][0]
    assert job_relabel == {"action": "replace", "targetLabel": "job", "replacement": svc["metadata"]["name"]}
    rule = one(objs, "PrometheusRule")["spec"]["groups"][0]["rules"][0]
    assert f'job="{svc["metadata"]["name"]}", namespace="{NAMESPACE}"' in rule["expr"]
    np_ = one(objs, "NetworkPolicy")
    assert np_["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = [p["port"] for rule in np_["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == ["http"]
    egress_ports = {p["port"] for rule in np_["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 9093, 443, 8443} <= egress_ports
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_prometheusrule_is_the_alerts_file(helm_results: dict[str, Any]) -> None:
    """One source of truth: the PrometheusRule holds files/alerts.yml's groups unchanged, except
    runbook_url prefixed with prometheusRule.runbookBaseUrl and the selectors scoped to the release
    (its job and namespace; kube-state-metrics' series to its pods)."""
    expected = ds.scoped_rule_groups(f"{RELEASE}-fill-publisher", NAMESPACE, f"{RELEASE}-fill-publisher")
    base = ALL_ON["prometheusRule"]["runbookBaseUrl"]
    for group in expected:
        for rule in group["rules"]:
            rule["annotations"]["runbook_url"] = f"{base}/{rule['annotations']['runbook_url']}"
    rule_obj = one(objects(helm_results, "all_on"), "PrometheusRule")
    assert rule_obj["spec"]["groups"] == expected
    assert rule_obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_the_dashboard_file(helm_results: dict[str, Any]) -> None:
    cm = one(objects(helm_results, "all_on"), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["fill-publisher.json"]) == json.loads(ds.DASHBOARD_FILE.read_text())


def test_configmap_is_the_config_values(helm_results: dict[str, Any]) -> None:
    """config verbatim (over the chart's defaults), and with more than one shard the `cluster:`
    section written from the cluster values (one shard: none, the config's own default)."""
    for scenario, values in SCENARIOS.items():
        expected = values["config"] | {
            "kafka": _chart_defaults()["config"]["kafka"] | values["config"]["kafka"],
            "http": values["config"].get("http", _chart_defaults()["config"]["http"]),
        }
        if _shards(values) > 1:
            cluster = _chart_defaults()["cluster"] | values["cluster"]
            expected["cluster"] = {"shards": cluster["shards"], "session_timeout_s": cluster["sessionTimeoutSeconds"]}
            if cluster["groupId"]:
                expected["cluster"]["group_id"] = cluster["groupId"]
        assert rendered_config(objects(helm_results, scenario)) == expected, scenario


def test_notes_render(helm_results: dict[str, Any]) -> None:
    notes = helm_results["render:all_on"]["result"]["fill-publisher/templates/NOTES.txt"]
    assert "kalshi-main (kalshi), zll-main (zll)" in notes
    assert "rollout status deployment/fp-fill-publisher" in notes


# ------------------------------------------------------------------------------- check-config
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_config_passes_check_config(helm_results: dict[str, Any], scenario: str, tmp_path: Path) -> None:
    """The ConfigMap's config.yaml is accepted by `fill-publisher check-config`.

    The secrets the pod would see are emulated: every *_file must lie under a path the
    Deployment mounts from the existing Secret; that prefix is rewritten to a temporary
    directory holding dummy secrets (a real RSA PEM for the Kalshi key, a real certificate for
    SSL files); *_env secrets are put in the environment.
    """
    if ds.fill_publisher_cli() is None:
        pytest.skip("publisher.cli (fill-publisher check-config) is not on this branch yet")
    objs = objects(helm_results, scenario)
    cfg = rendered_config(objs)
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    secret_mounts = {m["mountPath"]: tmp_path / "mnt" / m["name"]
                     for m in container["volumeMounts"] if m["name"] == "secrets"}
    local_cfg, env = ds.materialise_secrets(cfg, secret_mounts)
    # the pod's own name, where the Deployment passes it (static membership's instance id)
    env |= {e["name"]: f"{RELEASE}-fill-publisher-7d9f8c6b5-x2x4z" for e in container.get("env", [])
            if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"}
    proc = ds.check_config(local_cfg, tmp_path / "config.yaml", env)
    assert proc.returncode == 0, f"check-config refused the chart's config:\n{proc.stdout}\n{proc.stderr}"
    values = SCENARIOS[scenario]
    if _shards(values) > 1:
        assert f"cluster: {_shards(values)} shards" in proc.stdout, proc.stdout
        if values["cluster"].get("staticMembership"):
            assert f"static member {RELEASE}-fill-publisher-7d9f8c6b5-x2x4z" in proc.stdout, proc.stdout
    # and the same config without the secrets is refused, naming a field (exit 2, no traceback)
    if secret_mounts:
        for local in secret_mounts.values():
            for f in local.rglob("*"):
                if f.is_file():
                    f.unlink()
        proc = ds.check_config(local_cfg, tmp_path / "config.yaml", env)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr


def test_values_schema_knows_exactly_the_config_fields_of_the_code() -> None:
    """values.schema.json rejects unknown config keys (that is how it refuses inline secrets), so
    it must list exactly the fields the code's config structs accept: fails on drift."""
    try:
        from publisher.config import Config, HttpConfig, KafkaConfig
        from publisher.venues import VENUES
    except ImportError as exc:  # pragma: no cover - the code is written in parallel
        pytest.skip(f"publisher.config not importable yet: {exc}")
    schema = json.loads((ds.CHART / "values.schema.json").read_text())
    cfg = schema["properties"]["config"]["properties"]
    assert set(cfg) == set(Config.__struct_fields__)
    # config.cluster is written from the chart's own cluster values, one per field of the struct
    from publisher.config import ClusterConfig

    cluster_values = {"shards": "shards", "groupId": "group_id", "sessionTimeoutSeconds": "session_timeout_s",
                      "staticMembership": "instance_id"}
    assert set(schema["properties"]["cluster"]["properties"]) == set(cluster_values)
    assert set(cluster_values.values()) == set(ClusterConfig.__struct_fields__)
    assert set(cfg["kafka"]["properties"]) == set(KafkaConfig.__struct_fields__)
    assert set(cfg["http"]["properties"]) == set(HttpConfig.__struct_fields__)
    for cls in VENUES.source_configs():
        venue = cls.__struct_config__.tag
        props = schema["definitions"][f"{venue}Source"]["properties"]
        assert set(props) == set(cls.__struct_fields__) | {"venue"}, venue


def test_notes_without_a_mounted_secret(helm_results: dict[str, Any]) -> None:
    notes = helm_results["render:all_off"]["result"]["fill-publisher/templates/NOTES.txt"]
    assert "no Secret is mounted" in notes and 'Secret ""' not in notes
