"""/metrics: golden output from captured fixture trees, `promtool check metrics`, naming rules.

Regenerate the golden files after an intended change:
    pytest tests/unit/test_metrics.py --update-golden   (or MGLRUD_UPDATE_GOLDEN=1)
"""

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, captured_roots, copy_root, paths_for
from mglrud import snapshot_json as report
from mglrud.collectors import Published, build_registry
from mglrud.config import loads
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from synth import lru_gen_text

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# Whole captured trees, and bare lru_gen captures (tests/fixtures/lru_gen/lru_gen.NAME.txt)
# which get a tree of their own with just debugfs/lru_gen.
ROOTS = captured_roots() + sorted(p for p in FIXTURES.glob("lru_gen/lru_gen.*") if p.is_file())


def _tree(capture, tmp_path):
    if capture.is_dir():
        return copy_root(capture, tmp_path / capture.name)
    (tmp_path / "debugfs").mkdir()
    shutil.copyfile(capture, tmp_path / "debugfs" / "lru_gen")
    return tmp_path


def _name(capture) -> str:
    return capture.name if capture.is_dir() else capture.name.removeprefix("lru_gen.").removesuffix(".txt")
TAKEN_AT = 1_800_000_000.0

# Captures age every 2 s, three times: thresholds and buckets at that scale.
CONFIG = """
aging: {interval: 2s}
metrics: {cold_thresholds: [1s, 2s, 4s], idle_age_buckets: [1s, 2s, 3s, 4s, 6s]}
targets: [{name: all, memcg: "/**"}]
"""


def render(paths: dict, config: str = CONFIG) -> tuple[str, str]:
    cfg = loads(config + "paths: {" + ", ".join(f"{k}: '{v}'" for k, v in paths.items()) + "}\n")
    engine = Engine(cfg, writer=RecordingWriter(), wall=lambda: TAKEN_AT)
    snap = engine.cycle(age=False)
    published = Published(snap)
    text = generate_latest(build_registry(published, wall=lambda: TAKEN_AT + 2.5)).decode()
    return text, report.to_json(snap)


def _synthetic_paths(tmp_path) -> dict:
    (tmp_path / "debugfs").mkdir()
    (tmp_path / "debugfs/lru_gen").write_text(lru_gen_text([
        (1, "/", [(0, [(5, 9000, 100, 200), (6, 6000, 10, 20), (7, 3000, 1, 2), (8, 500, 0, 5)]),
                  (1, [(3, 700, 3, 3)])]),
        (7, '/we"ird\\path x', [(0, [(3, 4000, 1000, 0), (4, 100, 50000, 10)]), (1, [(2, 10, 0, 0)])]),
    ]))
    return paths_for(tmp_path)


def promtool(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not ROOTS, reason="no captured fixture roots in tests/fixtures/roots yet")
@pytest.mark.parametrize("root", ROOTS, ids=[_name(r) for r in ROOTS] or None)
def test_golden_metrics(root, tmp_path, golden):
    metrics, snapshot_json = render(paths_for(_tree(root, tmp_path)))
    for name, text in ((f"metrics.{_name(root)}.prom", metrics), (f"snapshot.{_name(root)}.json", snapshot_json)):
        golden(name, text)


@pytest.mark.skipif(not shutil.which(PROMTOOL), reason="promtool not installed (apt install prometheus)")
def test_promtool_clean_on_synthetic(tmp_path):
    metrics, _ = render(_synthetic_paths(tmp_path))
    p = promtool(metrics)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


@pytest.mark.skipif(not ROOTS or not shutil.which(PROMTOOL), reason="needs captured roots and promtool")
@pytest.mark.parametrize("root", ROOTS, ids=[_name(r) for r in ROOTS] or None)
def test_promtool_clean_on_captured(root, tmp_path):
    metrics, _ = render(paths_for(_tree(root, tmp_path)))
    p = promtool(metrics)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_families_names_and_labels(tmp_path):
    metrics, _ = render(_synthetic_paths(tmp_path))
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert set(families) == {
        "mglrud_build_info", "mglrud_snapshot_age_seconds", "mglrud_source_up", "mglrud_source_chosen", "mglrud_aging_runs",
        "mglrud_aging_errors", "mglrud_aging_duration_seconds", "mglrud_last_successful_aging_timestamp_seconds",
        "mglrud_target_memcgs", "mglrud_target_memcgs_dropped", "mglrud_memcg_resident_bytes", "mglrud_memcg_generation_bytes",
        "mglrud_memcg_generation_age_seconds", "mglrud_memcg_cold_bytes", "mglrud_memcg_idle_age_seconds",
        # a gauge histogram's count and sum, which text format 0.0.4 can only show as gauges
        "mglrud_memcg_idle_age_seconds_gcount", "mglrud_memcg_idle_age_seconds_gsum",
        "mglrud_memcg_info"}  # issue 16: the workload each memcg path names
    assert families["mglrud_snapshot_age_seconds"].samples[0].value == 2.5
    res = {(s.labels["memcg"], s.labels["numa_node"], s.labels["lru"]): s.value
           for s in families["mglrud_memcg_resident_bytes"].samples}
    assert res[("/", "0", "anon")] == 111 * 4096
    assert res[('/we"ird\\path x', "0", "anon")] == 51000 * 4096
    gens = {s.labels["gen"]: s.value for s in families["mglrud_memcg_generation_bytes"].samples
            if s.labels["memcg"] == "/" and s.labels["numa_node"] == "0" and s.labels["lru"] == "file"}
    assert gens == {"0": 5 * 4096, "1": 2 * 4096, "2": 20 * 4096, "3": 200 * 4096}
    cold = {s.labels["threshold"]: s.value for s in families["mglrud_memcg_cold_bytes"].samples
            if s.labels["memcg"] == "/" and s.labels["numa_node"] == "0" and s.labels["lru"] == "anon"}
    # idle lower bounds of gens 5..8: 6 s, 3 s, 0.5 s, 0
    assert cold == {"1.0": 110 * 4096, "2.0": 110 * 4096, "4.0": 100 * 4096}
    hist = {s.labels["le"]: s.value for s in families["mglrud_memcg_idle_age_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["memcg"] == "/" and s.labels["numa_node"] == "0"
            and s.labels["lru"] == "anon"}
    assert hist == {"1.0": 1 * 4096, "2.0": 1 * 4096, "3.0": 11 * 4096, "4.0": 11 * 4096, "6.0": 111 * 4096,
                    "+Inf": 111 * 4096}


def test_no_metrics_before_first_snapshot():
    text = generate_latest(build_registry(Published())).decode()
    assert [f.name for f in text_string_to_metric_families(text)] == ["mglrud_build_info"]
