"""grafana/dashboards/mglrud-kubernetes.json: every query returns data, checked with promtool.

No cluster (and so no kube-state-metrics) runs here, and the Prometheus of
tests/integration/test_prometheus_e2e.py has no pods to name. Instead each panel
query and each variable's label_values() selector, with the variables filled in as
a user would pick them, is evaluated by `promtool test rules` over the synthetic
mglrud and kube-state-metrics series of
deploy/prometheus/tests/mglrud-kubernetes.rules.test.yml, with both rule files
loaded: `vector(1) and on () count(QUERY) > 0` must give 1.
"""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DASHBOARD = REPO / "grafana" / "dashboards" / "mglrud-kubernetes.json"
RULES = REPO / "deploy" / "prometheus" / "rules"
SERIES = REPO / "deploy" / "prometheus" / "tests" / "mglrud-kubernetes.rules.test.yml"
PICKS = {  # All everywhere, then one namespace and one node as a user narrows down
    "all": {"job": "mglrud", "namespace": ".+", "instance": ".+", "pod": ".+", "threshold": "120.0"},
    "narrowed": {"job": "mglrud", "namespace": "shop", "instance": "node-a:9746", "pod": "web-0",
                 "threshold": "120.0"},
}


def _fill(expr: str, values: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def _queries(values: dict) -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
            assert m, v["query"]
            out.append((f"variable {v['name']}", f"count by ({m[2]}) ({_fill(m[1], values)})"))
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", _fill(t["expr"], values)))
    return out


@pytest.mark.parametrize("pick", PICKS)
def test_every_query_returns_data(pick, tmp_path):
    if not shutil.which(PROMTOOL) and not (REPO / PROMTOOL).exists():
        pytest.fail("promtool missing: scripts/install-deps test installs Debian's prometheus")
    case = yaml.safe_load(SERIES.read_text())["tests"][0]
    queries = _queries(PICKS[pick])
    assert len(queries) >= 14
    test = {
        "rule_files": [str(RULES / "mglrud.rules.yml"), str(RULES / "mglrud-kubernetes.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": case["interval"],
            "input_series": case["input_series"],
            "promql_expr_test": [{"expr": f"vector(1) and on () (count({expr}) > 0)", "eval_time": "5m",
                                  "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in queries],
        }],
    }
    f = tmp_path / "dashboard.test.yml"
    f.write_text(yaml.safe_dump(test, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", str(f)], capture_output=True, text=True, timeout=120)
    failed = [name for name, expr in queries if expr.replace('"', '\\"') in r.stdout + r.stderr]  # promtool quotes the expr
    assert r.returncode == 0, f"no data from {failed}:\n{r.stdout[-3000:]}{r.stderr}"
