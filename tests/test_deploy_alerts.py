"""The alert rules (helm/fill-publisher/files/alerts.yml, the one source of truth), checked with
the real promtool (Debian package `prometheus`): `promtool check rules` and `promtool test rules`
with unit tests (tests/deploy/alerts.test.yml) in which every alert fires and stays quiet."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
import deploy_support as ds

EXPECTED_ALERTS = {
    "FillPublisherDown",
    "FillPublisherShardsUnowned",
    "FillPublisherSourceStale",
    "FillPublisherPollErrorRatioHigh",
    "FillPublisherKafkaPublishErrors",
    "FillPublisherFillLagHigh",
    "FillPublisherDLQReceivingFills",
    "FillPublisherNotReady",
    "FillPublisherFillsBelowFloor",
    "FillPublisherConflictingFills",
}


def promtool() -> str:
    path = ds.tool("promtool")
    if path is None:
        pytest.fail("promtool missing: apt-get install -y prometheus")
    return path


def test_promtool_check_rules() -> None:
    proc = ds.run([promtool(), "check", "rules", str(ds.ALERTS_FILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = ds.run([promtool(), "test", "rules", str(ds.ALERT_TESTS_FILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_use_the_single_rule_file() -> None:
    tests = yaml.safe_load(ds.ALERT_TESTS_FILE.read_text())
    (rule_file,) = tests["rule_files"]
    assert (ds.ALERT_TESTS_FILE.parent / rule_file).resolve() == ds.ALERTS_FILE


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    tests = yaml.safe_load(ds.ALERT_TESTS_FILE.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_alerts_are_complete_and_link_existing_runbooks() -> None:
    rules = ds.all_alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^## (.+)$", ds.RUNBOOKS.read_text(), re.M)
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], rule["alert"]
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "docs/runbooks.md" and anchor in headings, rule["alert"]


def test_rules_and_dashboard_use_only_contract_metrics() -> None:
    """Metric names are fixed by the contract: a typo would make an alert silently never fire."""
    texts = {"alerts": ds.ALERTS_FILE.read_text(), "dashboard": ds.DASHBOARD_FILE.read_text()}
    for what, text in texts.items():
        used = set(ds.METRIC_RE.findall(text))
        assert used, what
        assert used <= ds.KNOWN_SERIES, (what, used - ds.KNOWN_SERIES)
    # and the dashboard shows every contract metric
    dash_used = {m.removesuffix("_bucket") for m in ds.METRIC_RE.findall(texts["dashboard"])}
    assert ds.CONTRACT_METRICS <= dash_used, ds.CONTRACT_METRICS - dash_used


def test_dashboard_json_is_importable() -> None:
    import json

    dash = json.loads(ds.DASHBOARD_FILE.read_text())
    assert dash["uid"] == "fill-publisher" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables substituted, is valid PromQL for promtool."""
    import json

    dash = json.loads(ds.DASHBOARD_FILE.read_text())
    records = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "5m")
                    .replace("$instance", ".*").replace("$source", ".*"))
            records.append({"record": f"dashboard:panel{panel['id']}:{target['refId'].lower()}", "expr": expr})
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    proc = ds.run([promtool(), "check", "rules", str(rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_publisher_exports_every_contract_metric() -> None:
    # histograms are exported as their _bucket/_sum/_count series
    missing = {name for name in ds.CONTRACT_SERIES - ds.HISTOGRAMS if name not in ds.KNOWN_SERIES}
    assert not missing, missing
