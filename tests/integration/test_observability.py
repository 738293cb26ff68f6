"""Prometheus config, recording and alerting rules, their unit tests and the
Grafana dashboard are valid, and every metric they use is one that a running
component really exports (scraped from the stack `make up` started)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML is pinned in requirements.lock; no stubs installed

from infra import prometheus, topology

ROOT = Path(__file__).resolve().parent.parent.parent
RULES_DIR = ROOT / "infra" / "prometheus"
RECORDING_RULES = RULES_DIR / "recording_rules.yml"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "chirp.json"

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}

# PromQL words that look like identifiers but are not metric names. Functions and
# aggregations are recognised by the "(" that follows them; these are not always.
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:])")
_SAMPLE_NAME = re.compile(r"^([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric (or recorded series) names a PromQL expression selects."""
    text = _STRING.sub('""', expr)  # label values, incl. ones holding { } [ ] ( )
    text = _GRAFANA_VAR.sub(" ", text)
    text = _MATCHERS.sub(" ", text)  # {label="..."}: label names are not metrics
    text = _RANGE.sub(" ", text)  # [5m], [$__rate_interval], [1h:5m]
    text = _LABEL_LIST.sub(" ", text)  # by (job, le), on (), group_left (x)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if match.group() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def promtool(*args: str) -> None:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    result = subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def scrape_names(url: str) -> set[str]:
    """Every metric name an endpoint exports, with the series names of histograms and summaries."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError as exc:
        pytest.fail(f"cannot scrape {url} (is the stack up? `make up`): {exc!r}")
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#") and (match := _SAMPLE_NAME.match(line)):
            names.add(match.group(1))
    return names


@cache
def exported_names() -> frozenset[str]:
    """What the running stack exports: every instance of the topology, Envoy, and Prometheus' own series."""
    urls = [f"http://{topology.HOST}:{inst.metrics_port}/metrics" for inst in topology.all_instances()]
    urls.append(f"http://{topology.HOST}:{topology.ENVOY_ADMIN_PORT}/stats/prometheus")
    names = set(PROMETHEUS_SERIES)
    for url in urls:
        names |= scrape_names(url)
    return frozenset(names)


# ---- promtool -----------------------------------------------------------------


def test_rendered_config_passes_promtool_and_scrapes_every_instance(tmp_path: Path) -> None:
    path = prometheus.render_config(ROOT, tmp_path)
    assert path == tmp_path / "conf" / "prometheus.yml"
    promtool("check", "config", str(path))  # also loads the rule files it names

    config = load_yaml(path)
    assert config["global"]["scrape_interval"] == f"{prometheus.scrape_interval_seconds()}s"  # 15s unless set
    assert config["rule_files"] == [str(RECORDING_RULES), str(ALERTS)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        (name, target, group["labels"]["instance"])
        for name, job in jobs.items()
        for group in job["static_configs"]
        for target in group["targets"]
    }
    for inst in topology.all_instances():
        assert (inst.service.name, f"{topology.HOST}:{inst.metrics_port}", inst.name) in targets
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["envoy"]["static_configs"][0]["targets"] == [f"{topology.HOST}:{topology.ENVOY_ADMIN_PORT}"]
    assert jobs["prometheus"]["static_configs"][0]["targets"] == [f"{topology.HOST}:{prometheus.PROMETHEUS_PORT}"]


def test_prometheus_command(tmp_path: Path) -> None:
    argv = prometheus.prometheus_command(ROOT, tmp_path)
    assert Path(argv[0]).name == "prometheus"
    assert f"--config.file={tmp_path / 'conf' / 'prometheus.yml'}" in argv
    assert f"--web.listen-address={topology.HOST}:9090" in argv
    assert f"--storage.tsdb.path={tmp_path / 'data' / 'prometheus'}" in argv
    assert "--storage.tsdb.retention.time=2d" in argv
    assert "--web.enable-lifecycle" in argv


def test_prometheus_ready_is_true_when_it_answers_and_false_when_nothing_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert prometheus.prometheus_ready() is True, "the stack's Prometheus should answer /-/ready"
    with socket.socket() as probe:  # a port nobody listens on once this socket closes
        probe.bind((topology.HOST, 0))
        unused = probe.getsockname()[1]
    monkeypatch.setattr(prometheus, "PROMETHEUS_PORT", unused)
    assert prometheus.prometheus_ready() is False  # refused, not raised


def test_rule_files_pass_promtool_check() -> None:
    promtool("check", "rules", str(RECORDING_RULES), str(ALERTS))


def test_alert_unit_tests_pass() -> None:
    promtool("test", "rules", str(ALERTS_TEST))


def test_every_alert_has_for_severity_and_annotations() -> None:
    alerts = rules(ALERTS)
    assert alerts
    for rule in alerts:
        assert "alert" in rule, rule
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    tested = {case["alertname"] for test in load_yaml(ALERTS_TEST)["tests"] for case in test.get("alert_rule_test", [])}
    assert {rule["alert"] for rule in alerts} <= tested, "every alert has a promtool unit test"


# ---- dashboard ----------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "chirp-overview"
    assert board["title"]
    assert board["schemaVersion"] >= 36
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = board["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert isinstance(panel["id"], int) and title and panel["type"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), title
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = title
        assert panel["targets"], title
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title


def test_dashboard_covers_what_on_call_needs() -> None:
    used = set().union(*(metric_names(t["expr"]) for p in dashboard()["panels"] for t in p["targets"]))
    assert {
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "chirp_fanout_lag_seconds_bucket",
        "chirp_timeline_cache_total",
        "chirp_celebrity_pulls_per_read_count",
        "chirp_consumer_lag_messages",
        "envoy_cluster_membership_healthy",
        "envoy_cluster_membership_total",
        "envoy_http_downstream_rq_xx",
    } <= used


# ---- every metric used is exported ------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(foo_bucket{a="x{y}[z]", b=~"$job"}[$__rate_interval])))'
        " / on (job) group_left (team) bar:ratio:rate5m > 1e3 and ignoring(x) baz offset 5m"
        " or sum(rate(qux_total[1h:5m])) by (job) unless count without (le) (up == bool 0)"
    )
    assert metric_names(expr) == {"foo_bucket", "bar:ratio:rate5m", "baz", "qux_total", "up"}


def test_every_metric_in_dashboard_and_rules_is_exported() -> None:
    recorded = {rule["record"] for rule in rules(RECORDING_RULES)}
    used: dict[str, set[str]] = {}  # metric name -> where it is used
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for path in (RECORDING_RULES, ALERTS):
        for rule in rules(path):
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(f"rule {rule.get('record') or rule.get('alert')}")
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["definition"])
            assert match, f"variable {var['name']}: {var['definition']}"
            used.setdefault(match.group(1), set()).add(f"variable {var['name']}")

    assert {"grpc_server_handled_total", "chirp_consumer_failing", "up"} <= set(used)
    missing = {name: sorted(where) for name, where in used.items() if name not in recorded | exported_names()}
    assert not missing, f"metrics nobody exports: {json.dumps(missing, indent=2)}"
