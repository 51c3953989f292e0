"""deploy/monitoring: alert rules and the Grafana dashboard use only series and label values
adapters/metrics.py really exposes; the rules pass `promtool check rules` where it is installed
(Debian's `prometheus` package), and a structural check always."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m
from tests.fixtures.must_run import unavailable

MONITORING = facts.DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OPERATIONS = facts.ROOT / "docs" / "operations.md"
# Grafana's own variables, replaced by what they stand for before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$saga": ".*"}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(series name, {label: value of an = matcher, or "" for others}) of every selector."""
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {
                mt.name: (mt.value if str(mt.op).endswith("Equal") else "")
                for mt in node.matchers.matchers
            }
            found.append((node.name or labels.pop("__name__", ""), labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def expr_problems(expr: str) -> list[str]:
    try:
        found = selectors(expr)
    except Exception as exc:
        return [f"{expr!r} does not parse: {exc}"]
    known = facts.metric_labels() | facts.PROMETHEUS_SERIES
    values = facts.label_values()
    problems = []
    for name, labels in found:
        if name not in known:
            problems.append(f"{name} is not a metric the code exposes")
            continue
        if name in facts.PROMETHEUS_SERIES:
            continue
        for label, value in labels.items():
            if label not in known[name] | facts.TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
            elif value and value not in values.get((name, label), {value}):
                problems.append(f"{name}{{{label}={value!r}}} never happens")
    return problems


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for d in m.iter_dicts(dashboard["panels"]) for t in d.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            # label_values(series, label): the series must exist and carry the label.
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert match, var["definition"]
            exprs.append(f'{match[1]}{{{match[2]}=~".+"}}')
    return exprs


def substituted(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_alert_rules_use_real_metrics_and_label_values() -> None:
    problems = [p for rule in rules() for p in expr_problems(rule["expr"])]
    assert problems == []
    assert expr_problems("sum(saga_sagas_parked)") != []
    assert expr_problems('max(saga_instances{status="parked"}) > 0') != []
    assert expr_problems('sum(rate(saga_step_seconds_bucket{queue="x"}[5m]))') != []


def test_alert_rules_are_well_formed() -> None:
    names = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["alert"] not in names
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    assert len(names) >= 8


def test_every_runbook_link_lands_on_a_heading_of_the_docs() -> None:
    def anchor(heading: str) -> str:  # GitHub's rule: lower case, drop punctuation, - for spaces
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    anchors = {
        anchor(line.lstrip("#")) for line in OPERATIONS.read_text().splitlines() if line[:1] == "#"
    }
    for rule in rules():
        link = rule["annotations"]["runbook"]
        path, _, fragment = link.partition("#")
        assert (facts.ROOT / path).is_file(), link
        if path == "docs/operations.md" and fragment:
            assert fragment in anchors, link


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        unavailable("promtool not installed: apt-get install --no-install-recommends prometheus")

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["promtool", "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = check(ALERTS)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "alerts.yaml"
    broken.write_text(ALERTS.read_text().replace("for: 5m", "for: five minutes", 1))
    assert check(broken).returncode != 0


def test_dashboard_uses_real_metrics_and_label_values() -> None:
    dashboard = m.json_file(DASHBOARD)
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    problems = [p for e in exprs for p in expr_problems(substituted(e))]
    assert problems == []
    broken = m.clone(dashboard)
    broken["panels"][0]["targets"][0]["expr"] = "sum(saga_parked_total)"
    assert [p for e in dashboard_exprs(broken) for p in expr_problems(substituted(e))] != []


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = m.json_file(DASHBOARD)
    assert {"title", "uid", "panels", "schemaVersion", "templating"} <= set(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"stat", "timeseries", "gauge", "table", "bargauge"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
    # Every series the code exposes is on the dashboard somewhere (the counters' _sum and
    # _count and the histogram's own series aside).
    used = {name for e in dashboard_exprs(dashboard) for name, _ in selectors(substituted(e))}
    wanted = {n for n in facts.metric_labels() if not n.endswith(("_sum", "_count"))}
    assert wanted - used == set()
