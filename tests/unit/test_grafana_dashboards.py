"""grafana/: the committed dashboards are what grafana/build.py generates, and are well formed.

The equality check needs grafana-foundation-sdk (PyPI; not in Debian): it runs
build.py --check with this Python if it has the SDK, else with the project's
venv (scripts/install-deps), and is skipped, saying so, when neither has it.
The structural checks need only the JSON and run everywhere.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
SDK_PIN = "grafana-foundation-sdk==1769699998!10.1.0"

# Grafana's built-in variables, set by Grafana itself.
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__dashboard"}
# Series Prometheus itself makes (scrape bookkeeping, alert state).
PROMETHEUS_SERIES = {"up", "ALERTS", "scrape_samples_scraped", "scrape_duration_seconds",
                     "scrape_series_added", "scrape_samples_post_metric_relabeling"}
PANEL_TYPES = {"row", "timeseries", "heatmap", "stat", "table", "bargauge", "state-timeline", "text"}
PROMQL_WORDS = {"sum", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "topk", "bottomk", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile",
                "sort_desc", "sort", "offset", "bool", "label_values", "time", "inf", "nan"}


def _python_with_sdk() -> str | None:
    venv = Path(os.environ.get("MGLRUD_CACHE", "/var/cache/mglrud")) / "venv" / "bin" / "python"
    for py in (sys.executable, str(venv)):
        if Path(py).exists() and subprocess.run([py, "-c", "import grafana_foundation_sdk"],
                                                capture_output=True, timeout=60).returncode == 0:
            return py
    return None


def test_committed_json_is_generated_output():
    py = _python_with_sdk()
    if py is None:
        pytest.fail(f"grafana-foundation-sdk not installed: scripts/install-deps test puts '{SDK_PIN}' "
                    "into the project venv")
    r = subprocess.run([py, str(GRAFANA / "build.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def _exported_names() -> set[str]:
    """Every series name mglrud's collectors can export, from their source."""
    names = set()
    for f in (REPO / "mglrud" / "collectors").glob("*.py"):
        text = f.read_text()
        for kind, name in re.findall(r'(\w*)MetricFamily\(\s*"(mglrud_\w+)"', text):
            if kind == "Counter":
                names |= {name + "_total"}
            elif kind == "Info":
                names.add(name + "_info")
            elif kind in ("Histogram", "GaugeHistogram"):
                names |= {name + s for s in ("_bucket", "_count", "_sum", "_gcount", "_gsum")}
            else:
                names.add(name)
    return names


def _recorded_names() -> set[str]:
    groups = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def _exprs(d: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(d) for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
    return exprs


def test_dashboards_exist():
    assert {p.name for p in DASHBOARDS} == {"mglrud-fleet.json", "mglrud-host.json", "mglrud-process.json",
                                            "mglrud-heat.json", "mglrud-daemon.json",
                                            "mglrud-kubernetes.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_structure(path):
    d = json.loads(path.read_text())
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]
    assert d["title"] and "mglrud" in d["tags"]
    panels = _panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), ids
    cells = set()
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["h"] > 0 and g["w"] > 0, p["title"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (cells & mine), f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), f"panel {p['id']} needs a title and a description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t.get("refId") for t in p["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            if t.get("format") == "heatmap":
                assert t.get("legendFormat") == "{{le}}" and "by (le)" in t["expr"], p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables(path):
    d = json.loads(path.read_text())
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]
    assert {"job", "instance"} <= variables.keys()
    text = json.dumps(d)
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - variables.keys() - BUILTIN_VARS == set(), "undefined variables"
    exprs = " ".join(_exprs(d))
    for name in variables.keys() - {"datasource"}:
        assert re.search(rf"\${name}\b", exprs), f"variable {name} is defined but no query uses it"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_series_names_exist(path):
    """Every series a query names is exported by mglrud, recorded by deploy/prometheus/rules/, or Prometheus' own."""
    known = _exported_names() | _recorded_names() | PROMETHEUS_SERIES
    d = json.loads(path.read_text())
    for expr in _exprs(d):
        stripped = re.sub(r'"[^"]*"|\[[^]]*\]|\{[^}]*\}', " ", expr)  # drop strings, ranges, matchers
        for word in re.findall(r"[A-Za-z_:][\w:]*", stripped):
            if word in PROMQL_WORDS or word in ("job", "instance", "le", "numa_node", "lru", "gen", "memcg", "comm",
                                                "mapping", "reason", "source", "target", "threshold", "e",
                                                "namespace", "pod", "container", "qos_class"):
                continue
            assert word in known, f"{path.name}: {word!r} in {expr!r} is neither exported nor recorded"


def test_provisioning():
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert dash["apiVersion"] == 1 and dash["providers"][0]["type"] == "file"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
