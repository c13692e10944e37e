"""deploy/prometheus: `promtool check rules`, `promtool test rules`, `promtool check config`.

The rule unit tests (deploy/prometheus/tests/*.yml) have, for every alert, a
case where it fires and cases where it must stay quiet; promtool compares the
exact set of alerts, labels and rendered annotations at each eval_time.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "rules" / "mglrud.rules.yml"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RUNBOOK = REPO / "README.md"

pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(),
                                reason="promtool missing: apt-get install prometheus (scripts/install-deps test)")


def _promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _alerts() -> list[dict]:
    groups = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    return [r for g in groups for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_check_rules(rules):
    r = _promtool("check", "rules", str(rules))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


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
