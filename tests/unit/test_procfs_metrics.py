"""The /proc source's metrics and JSON: golden output from the captured process, promtool, bounds.

Regenerate the golden files after an intended change:
    pytest tests/unit/test_procfs_metrics.py --update-golden   (or MGLRUD_UPDATE_GOLDEN=1)
"""

import json
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mglrud.collectors import procfs as procfs_families
from mglrud.snapshot_json import procfs_dict as to_dict
from test_procfs_parse import SMAPS, SMAPS_FIRST, WL, Clock, fake_proc, make_source, target

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
THRESHOLDS = (30.0, 60.0, 120.0)
BUCKETS = (30.0, 60.0, 120.0)


def snapshot(tmp_path, top=3, read_numa=False):
    """Three reads 30 s apart of two copies of the captured process under one target."""
    pids = (WL["pid"], WL["pid"] + 1)
    root = fake_proc(tmp_path, SMAPS_FIRST, pids=pids)
    clock = Clock()
    src = make_source(root, clock, top_mappings=top, read_numa=read_numa)
    t = target("cmdline", "procfs_workload", "wl")
    src.read([t])
    for pid in pids:
        (root / str(pid) / "smaps").write_text(SMAPS)
    for _ in range(2):
        clock.t += 30
        data = src.read([t])
    return SimpleNamespace(procfs=data, cold_thresholds=THRESHOLDS, idle_age_buckets=BUCKETS)


class Only:
    """A collector of just the /proc source's families."""

    def __init__(self, collect):
        self.collect = collect


def render(snap) -> str:
    registry = CollectorRegistry()
    registry.register(Only(lambda: procfs_families.families(snap)))
    return generate_latest(registry).decode()


def test_golden(tmp_path, golden):
    snap = snapshot(tmp_path)
    outputs = {"metrics.procfs.prom": render(snap),
               "snapshot.procfs.json": json.dumps(to_dict(snap.procfs, THRESHOLDS), indent=1) + "\n"}
    for name, text in outputs.items():
        golden(name, text)


@pytest.mark.skipif(not shutil.which(PROMTOOL), reason="promtool not installed (apt install prometheus)")
def test_promtool_clean(tmp_path):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=render(snapshot(tmp_path)),
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_cardinality_is_bounded_and_no_pid_label(tmp_path):
    top = 3
    fam = families(render(snapshot(tmp_path, top=top)))
    for f in fam.values():
        for s in f.samples:
            assert "pid" not in s.labels
    mappings = {(s.labels["comm"], s.labels["mapping"]) for s in fam["mglrud_mapping_resident_bytes"].samples}
    assert len(mappings) == top + 1 and ("", "other") in mappings
    # The bound stated in collectors/procfs.py: (K+1)(2N + 2 + 2T) + 2(B + 3) + 2 per target.
    per_target = sum(len(f.samples) for name, f in fam.items() if not name.startswith("mglrud_procfs_")
                     or name == "mglrud_procfs_interval_seconds")
    assert per_target <= (top + 1) * (2 * 1 + 2 + 2 * len(THRESHOLDS)) + 2 * (len(BUCKETS) + 3) + 2


def test_values_add_up(tmp_path):
    snap = snapshot(tmp_path, top=100)
    fam = families(render(snap))
    total = sum(p.resident_bytes for p in snap.procfs.processes)
    assert sum(s.value for s in fam["mglrud_mapping_resident_bytes"].samples) == total
    anon = {s.labels["mapping"]: s.value for s in fam["mglrud_mapping_resident_bytes"].samples
            if s.labels["lru"] == "anon"}
    size = WL["size"]
    # Two processes, each with a hot and a cold region named [anon] plus other small anon mappings.
    assert anon["[anon]"] >= 4 * size
    assert anon["/memfd:mglrud-test"] == 2 * size
    accessed = {s.labels["mapping"]: s.value for s in fam["mglrud_mapping_accessed_bytes"].samples}
    assert accessed["/memfd:mglrud-test"] == 0
    idle = {s.labels["mapping"]: s.value for s in fam["mglrud_mapping_idle_seconds"].samples}
    assert idle["/memfd:mglrud-test"] == 60.0 and idle["[heap]"] == 0.0
    cold = {(s.labels["mapping"], s.labels["lru"], s.labels["threshold"]): s.value
            for s in fam["mglrud_mapping_cold_bytes"].samples}
    assert cold[("/memfd:mglrud-test", "anon", "60.0")] == 2 * size
    assert cold[("/memfd:mglrud-test", "anon", "120.0")] == 0
    gsum = {s.labels["lru"]: s.value for s in fam["mglrud_mapping_idle_age_seconds_gcount"].samples}
    assert gsum["anon"] + gsum["file"] == total
    processes = {s.labels["target"]: s.value for s in fam["mglrud_target_processes"].samples}
    assert processes == {"wl": 2}
    errors = {s.labels["reason"]: s.value for s in fam["mglrud_procfs_errors"].samples}
    assert errors == {"exited": 0, "eperm": 0, "parse": 0, "other": 0}


def test_node_split_from_numa_maps(tmp_path):
    fam = families(render(snapshot(tmp_path, top=100, read_numa=True)))
    nodes = {s.labels["numa_node"] for s in fam["mglrud_mapping_resident_bytes"].samples}
    assert nodes == {"0"}  # captured on a one-node host; the VM's --numa guest has two


def test_nothing_before_the_source_has_data():
    assert render(SimpleNamespace(procfs=None)) == ""
    assert render(None) == ""


def test_table_rows_match_the_metric_groups(tmp_path):
    from mglrud.render.snapshot_table import procfs_rows
    rows = procfs_rows(snapshot(tmp_path).procfs, THRESHOLDS, str)
    assert rows[0] == ("TARGET", "COMM", "MAPPING", "RESIDENT", "ACCESSED", "IDLE",
                       "COLD>=30.0s", "COLD>=60.0s", "COLD>=120.0s")
    assert [r[2] for r in rows[1:]] == ["[anon]", "/usr/bin/python3.11", "/memfd:mglrud-test", "other"]
    memfd = rows[3]
    assert memfd[4] == "0" and memfd[5] == "60s" and memfd[7] == str(2 * WL["size"])
