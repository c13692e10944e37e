"""Golden files are outputs, never inputs (issue 18, "tests that cannot fail").

tests/unit/golden/snapshot.procfs.json was written by test_procfs_metrics and read as the input of
the heatmap, report and TUI tests, so `--update-golden` re-approved their inputs together with the
output under test. Golden files are only compared through conftest's `golden` fixture; inputs come
from the fixtures (tests/unit/fixture_snapshots.py).
"""

import re
from pathlib import Path

from fixture_snapshots import lru_gen_snapshot, procfs_snapshot

HERE = Path(__file__).parent


def test_no_test_reads_a_golden_file_directly():
    readers = []
    for path in sorted(HERE.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"GOLDEN\s*/|golden/[\w.-]+\.(json|prom)\b.*read_text|[\"']golden[\"']\s*\)?\s*/", line):
                readers.append(f"{path.name}:{n}: {line.strip()}")
    assert readers == [], "golden files read as test input"


def test_fixture_snapshots_are_fresh_copies():
    a, b = procfs_snapshot(), procfs_snapshot()
    assert a == b and a is not b and a["targets"], "built from the captured process"
    a["targets"].clear()
    assert procfs_snapshot()["targets"]


def test_lru_gen_snapshots_come_from_the_captured_roots():
    for name in ("vm-1node", "vm-2node"):
        snap = lru_gen_snapshot(name)
        assert snap["memcgs"], name
