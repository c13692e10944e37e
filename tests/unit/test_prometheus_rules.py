"""deploy/prometheus: `promtool check rules`, `promtool test rules`, `promtool check config`, and the
rules' generator (deploy/prometheus/build.py: selector, cluster label, runbook URL, as a mixin's _config).

The rule unit tests (deploy/prometheus/tests/*.yml) have, for every alert, a
case where it fires and cases where it must stay quiet; promtool compares the
exact set of alerts, labels and rendered annotations at each eval_time.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "rules" / "mglrud.rules.yml"  # recording rules
ALERTS = DEPLOY / "rules" / "mglrud.alerts.yml"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RUNBOOK = REPO / "README.md"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(),
                                reason="promtool missing: apt-get install prometheus (scripts/install-deps test)")


def _promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _build_module():
    spec = importlib.util.spec_from_file_location("mglrud_rules_build", DEPLOY / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _build_module()


def _rules(text: str) -> list[dict]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def _alerts() -> list[dict]:
    return [r for f in RULE_FILES for r in _rules(f.read_text()) if "alert" in r]


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_check_rules(rules):
    r = _promtool("check", "rules", str(rules))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alerts_and_recording_rules_are_apart():
    assert all("record" in r for r in _rules(RULES.read_text()))
    assert _alerts() and all("alert" in r for r in _rules(ALERTS.read_text()))
    assert [f for f in RULE_FILES if any("alert" in r for r in _rules(f.read_text()))] == [ALERTS]


def test_rules_are_what_the_generator_renders():
    """rules/ is build.py's output with the defaults, not edited by hand."""
    r = subprocess.run([sys.executable, str(DEPLOY / "build.py"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


# Raw (not recorded) series: mglrud_* not preceded by "level:", and up.
_RAW = re.compile(r"(?<![:\w])(mglrud_[a-z_]+|up)(\{[^}]*\})?(?=[\s\[)]|$)")
_LISTS = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def test_overridden_settings_leave_no_literal_default(tmp_path):
    sel, cluster, base = 'job="node-mglrud",env=~"prod|staging"', "k8s_cluster", "https://wiki.example.com/runbooks/mglrud"
    out = tmp_path / "rules"
    r = subprocess.run([sys.executable, str(DEPLOY / "build.py"), "--selector", sel, "--cluster-label", cluster,
                        "--runbook-url", base, "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("*.yml"))
    assert [f.name for f in files] == sorted(f.name for f in (DEPLOY / "src").glob("*.yml"))
    assert [f.name for f in files] == [f.name for f in RULE_FILES]  # every rule file is generated
    raw_seen = 0
    for f in files:
        text = f.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert 'job="mglrud"' not in code and "README.md" not in code and "@" not in code, f.name
        for rule in _rules(text):
            expr = rule["expr"]
            for m in _RAW.finditer(expr):
                raw_seen += 1
                assert m.group(2) and m.group(2).startswith("{" + sel), (f.name, expr)
            for labels in _LISTS.findall(expr):
                names = [x.strip() for x in labels.split(",")]
                if "job" in names:  # every aggregation or join that keeps the job keeps the cluster
                    assert names[0] == cluster, (f.name, expr)
            if "alert" in rule:
                url = rule["annotations"]["runbook_url"]
                assert url == f"{base}#{rule['alert'].lower()}", url
    assert raw_seen >= 12
    p = _promtool("check", "rules", *map(str, files))
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_runbook_url_is_absolute():
    for a in _alerts():
        url = urlsplit(a["annotations"]["runbook_url"])
        assert url.scheme == "https" and url.netloc and url.fragment == a["alert"].lower(), a["alert"]


def test_a_further_template_takes_the_settings(tmp_path):
    """Another rules file (e.g. the Kubernetes recording rules) follows the settings once it is a template."""
    (tmp_path / "extra.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - record: pod:x:sum\n"
        "        expr: sum by (@CLUSTER@job, pod_uid) (mglrud_memcg_info{@SELECTOR@, pod_uid!=\"\"})\n")
    files = build.build('job="m"', "c", "https://example.org/rb", src=tmp_path)
    assert 'sum by (c, job, pod_uid) (mglrud_memcg_info{job="m", pod_uid!=""})' in files["extra.yml"]
    files = build.build("", "", "https://example.org/rb", src=tmp_path)
    assert 'sum by (job, pod_uid) (mglrud_memcg_info{pod_uid!=""})' in files["extra.yml"]
    (tmp_path / "bad.yml").write_text("groups: [] # @JOB@\n")
    with pytest.raises(build.BuildError, match="unknown token"):
        build.build(src=tmp_path)


@pytest.mark.parametrize("flag, value, words", [
    ("--selector", "{job=\"x\"}", "--selector: must be PromQL label matchers"),
    ("--selector", "job=mglrud", "--selector: must be PromQL label matchers"),
    ("--cluster-label", "my-cluster", "--cluster-label: must be a label name"),
    ("--runbook-url", "README.md", "--runbook-url: must be an absolute http(s) URL"),
    ("--runbook-url", "https://x.org/rb#a", "without a #fragment"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, flag, value, words):
    r = subprocess.run([sys.executable, str(DEPLOY / "build.py"), flag, value, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.iterdir())


def test_every_rule_file_has_unit_tests():
    tested = {(f.parent / rf).resolve() for f in RULE_TESTS for rf in yaml.safe_load(f.read_text())["rule_files"]}
    assert set(RULE_FILES) <= tested, set(RULE_FILES) - tested


def test_rule_unit_tests():
    assert RULE_TESTS, "no rule unit tests in deploy/prometheus/tests"
    r = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout


def test_example_scrape_config():
    r = _promtool("check", "config", str(DEPLOY / "prometheus.example.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_quiet():
    tested: dict[str, set[bool]] = {}
    for f in RULE_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                tested.setdefault(t["alertname"], set()).add(bool(t.get("exp_alerts")))
    for a in _alerts():
        assert tested.get(a["alert"]) == {True, False}, \
            f"{a['alert']}: needs a rule test where it fires and one where it stays quiet"


def test_every_alert_is_documented():
    runbook = RUNBOOK.read_text()
    for a in _alerts():
        ann = a["annotations"]
        assert {"summary", "description", "runbook_url"} <= ann.keys(), a["alert"]
        anchor = a["alert"].lower()
        assert ann["runbook_url"].endswith("#" + anchor), a["alert"]
        assert f"\n### {a['alert']}\n" in runbook, f"README.md has no '### {a['alert']}' section"
        assert a["labels"]["severity"] in ("info", "warning", "critical"), a["alert"]
