"""The Grafana dashboard queries only series this package exports, under the names Ray
gives them (``ray_`` prefix, ``_total`` for counters; checked against a real scrape in
test_metrics.py), with labels those metrics carry, and charts every metric."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmvm_ray.observability.metrics import METRICS, exported_name

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "llmvm-dashboard.json"
SERIES = re.compile(r"\bray_llmvm_[a-z_]+")
SELECTOR = re.compile(r"\b(ray_llmvm_[a-z_]+)\{([^}]*)\}")
BY = re.compile(r"\bby \(([^)]*)\)")
# Labels Ray adds to every series, and the histogram bucket bound.
RAY_LABELS = {"WorkerId", "NodeAddress", "SessionName", "Component", "Version", "le"}


def _series_of() -> dict[str, str]:
    """Every scraped series name -> the metric it belongs to."""
    names = {}
    for name, (kind, _, _) in METRICS.items():
        base = exported_name(name)
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names.update({base + s: name for s in suffixes})
    return names


def _exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "application"} <= variables
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("title,expr", _exprs())
def test_queries_name_real_series_and_labels(title, expr):
    series = _series_of()
    used = SERIES.findall(expr)
    assert used, f"{title}: no llmvm series"
    unknown = [s for s in used if s not in series]
    assert not unknown, f"{title}: {unknown} are not exported"
    labels = set(RAY_LABELS)
    for s in used:
        labels |= set(METRICS[series[s]][1])
    for metric, selector in SELECTOR.findall(expr):
        own = set(METRICS[series[metric]][1]) | RAY_LABELS
        named = {m.split("=")[0].rstrip("!~").strip() for m in selector.split(",") if m}
        assert named <= own, f"{title}: {metric} has no label {named - own}"
    for group in BY.findall(expr):
        named = {label.strip() for label in group.split(",")}
        assert named <= labels, f"{title}: grouped by unknown {named - labels}"


def test_every_metric_is_charted():
    charted = {name for _, expr in _exprs() for name in SERIES.findall(expr)}
    series = _series_of()
    assert {series[s] for s in charted} == set(METRICS)


def test_docs_list_every_metric():
    docs = (DASHBOARD.parents[1] / "observability.md").read_text()
    missing = [exported_name(n) for n in METRICS if f"`{exported_name(n)}`" not in docs]
    assert not missing
