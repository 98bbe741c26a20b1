"""Alerts and dashboard: valid for promtool/Grafana, and they query only metrics listed in contrib/metric_names.txt,
which the agent exports (or which are marked planned)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.metrics import Metrics

from .conftest import REPO, run

CONTRIB = REPO / "contrib"
ALERTS = CONTRIB / "prometheus" / "alerts.yml"
DASHBOARD = CONTRIB / "grafana" / "ipvlan-bgp.json"
_METRIC = re.compile(r"\bipvlan_bgp_[a-z0-9_]+")


def listed_names() -> dict[str, bool]:
    """contrib/metric_names.txt as {name: planned}."""
    names: dict[str, bool] = {}
    for line in (CONTRIB / "metric_names.txt").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            names[fields[0]] = len(fields) > 1 and fields[1] == "planned"
    return names


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    return exprs + [v["definition"] for v in board["templating"]["list"] if "definition" in v]


def queried_names(exprs: list[str], listed: dict[str, bool]) -> set[str]:
    names = set()
    for name in (m for e in exprs for m in _METRIC.findall(e)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in listed else name)
    return names


def test_names_not_marked_planned_are_exported_today() -> None:
    current = {name for name, planned in listed_names().items() if not planned}
    assert current <= exported_names(), current - exported_names()


def test_planned_names_are_not_exported_yet() -> None:
    # Fails once one lands: then drop its "planned" marker in contrib/metric_names.txt.
    planned = {name for name, planned in listed_names().items() if planned}
    assert not planned & exported_names(), planned & exported_names()


def test_alerts_and_dashboard_query_only_listed_metrics() -> None:
    listed = listed_names()
    used = queried_names(alert_exprs() + dashboard_exprs(), listed)
    assert used <= set(listed), f"not in contrib/metric_names.txt: {sorted(used - set(listed))}"
    assert set(listed) <= used, f"listed but queried nowhere: {sorted(set(listed) - used)}"


def test_alerts_cover_the_operational_failures() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert alerts >= {"IpvlanBgpAgentDown", "IpvlanBgpGobgpdUnreachable", "IpvlanBgpNoEstablishedPeer",
                      "IpvlanBgpReconcileFailing", "IpvlanBgpPrefixesRefused", "IpvlanBgpDriftRepairedOften"}


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables | {"__rate_interval"}


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (Debian package 'prometheus'; make deps installs it)")
    return promtool


def test_promtool_checks_and_unit_tests_the_alerts() -> None:
    promtool = _promtool()
    run(promtool, "check", "rules", ALERTS)
    run(promtool, "test", "rules", ALERTS.with_name("alerts_test.yml"))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule promtool must accept."""
    promtool = _promtool()
    rules = [{"record": f"dashboard:query_{i}",
              "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, e in enumerate(dashboard_exprs()) if not e.startswith("label_values(")]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(promtool, "check", "rules", rule_file)
