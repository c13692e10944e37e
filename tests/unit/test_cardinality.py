"""Cardinality controls (issue 15 item 4; docs/fleet.md): metrics.disable, metrics.max_memcgs_per_target,
metrics.keep_empty_memcgs, and mglrud_target_memcgs_dropped -- on the captured two-node tree and on
synthetic lru_gen text for the choices the capture cannot show (ties, several targets)."""

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, copy_root, paths_for
from mglrud import exposition
from mglrud import snapshot_json
from mglrud.collectors import FAMILIES, Published, build_registry
from mglrud.config import ConfigError, loads
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from mglrud.model.lru_gen import GenHistogram, Generation
from mglrud.sources.lru_gen import select

TAKEN_AT = 1_800_000_000.0
BASE = """
aging: {interval: 2s}
metrics: {cold_thresholds: [1s, 2s, 4s], idle_age_buckets: [1s, 2s, 3s, 4s, 6s]%s}
targets: [{name: all, memcg: "/**"}]
"""
ROOT = FIXTURES / "roots" / "vm-2node"


def scrape(tmp_path, extra: str = ""):
    root = copy_root(ROOT, tmp_path / "root")
    paths = paths_for(root)
    cfg = loads(BASE % extra + "paths: {" + ", ".join(f"{k}: '{v}'" for k, v in paths.items()) + "}\n")
    snap = Engine(cfg, writer=RecordingWriter(), wall=lambda: TAKEN_AT).cycle(age=False)
    text = generate_latest(build_registry(Published(snap), wall=lambda: TAKEN_AT + 1)).decode()
    return snap, {f.name: f for f in text_string_to_metric_families(text)}


def memcgs(fams) -> set[str]:
    return {s.labels["memcg"] for s in fams["mglrud_memcg_resident_bytes"].samples}


def dropped(fams) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in fams["mglrud_target_memcgs_dropped"].samples
            if s.labels["target"] == "all"}


# ---------------------------------------------------------------- config

def test_disable_takes_short_keys_and_family_names():
    cfg = loads("metrics: {disable: [generation, idle_age, mglrud_mapping_cold_bytes]}")
    assert cfg.metrics.disable == {"mglrud_memcg_generation_bytes", "mglrud_memcg_idle_age_seconds",
                                   "mglrud_mapping_cold_bytes"}
    assert loads("{}\n").metrics.disable == frozenset()
    # an info family: its family name lacks the _info the exposition adds; both spellings work
    assert loads("metrics: {disable: [memcg_info]}").metrics.disable == {"mglrud_memcg"}
    assert loads("metrics: {disable: [mglrud_memcg_info]}").metrics.disable == {"mglrud_memcg"}


def test_every_disable_key_names_a_family_the_collectors_render(tmp_path):
    # The table is not a copy that could drift: each name is a family some collector yields.
    _, fams = scrape(tmp_path)
    memcg_keys = {k: v for k, v in FAMILIES.items() if v.startswith("mglrud_memcg_")}
    assert memcg_keys and set(memcg_keys.values()) <= set(fams)
    # the /proc and BPF ones (no data for them in this tree): built under that name in their module
    import re
    from conftest import REPO
    built = {n for f in (REPO / "mglrud" / "collectors").glob("*.py")
             for n in re.findall(r'MetricFamily\(\s*"(mglrud_\w+)"', f.read_text())}
    assert set(FAMILIES.values()) <= built


@pytest.mark.parametrize("yaml_text, key, words", [
    ("metrics: {disable: [generation, generations]}", "metrics.disable[1]", "got 'generations'"),
    ("metrics: {disable: [mglrud_build_info]}", "metrics.disable[0]", "must be one of resident, generation"),
    ("metrics: {disable: generation}", "metrics.disable", "must be a list"),
    ("metrics: {max_memcgs_per_target: -1}", "metrics.max_memcgs_per_target", "from 0 to"),
    ("metrics: {keep_empty_memcgs: 1}", "metrics.keep_empty_memcgs", "true or false"),
])
def test_bad_controls_are_one_line_naming_the_key(yaml_text, key, words):
    with pytest.raises(ConfigError) as e:
        loads(yaml_text)
    assert e.value.key == key
    assert words in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- select(), pure

def lruvec(path, node, anon, file=0, memcg_id=1):
    return GenHistogram(memcg_id, path, node, (Generation(1, 10.0, anon, file), Generation(2, 1.0, 0, 0)))


def test_select_drops_empty_memcgs_and_caps_per_target_keeping_the_largest():
    vecs = (lruvec("/a", 0, 5), lruvec("/a", 1, 0),   # /a: 5 pages, on node 0 only: kept whole
            lruvec("/b", 0, 0), lruvec("/b", 1, 0),   # empty on every node
            lruvec("/c", 0, 3), lruvec("/d", 0, 3),   # tie with /c: the path decides
            lruvec("/x", 0, 1), lruvec("/y", 0, 0))
    owner = {"/a": "t1", "/b": "t1", "/c": "t1", "/d": "t1", "/x": "t2", "/y": "t2"}
    kept, out = select(vecs, owner, cap=2, keep_empty=False)
    assert [(h.memcg_path, h.node) for h in kept] == [("/a", 0), ("/a", 1), ("/c", 0), ("/x", 0)]
    assert out == (("t1", "empty", 1), ("t1", "max_memcgs", 1), ("t2", "empty", 1), ("t2", "max_memcgs", 0))
    kept, out = select(vecs, owner, cap=0, keep_empty=True)
    assert kept == vecs
    assert {n for _, _, n in out} == {0}


# ---------------------------------------------------------------- on the captured two-node tree

def test_default_leaves_out_the_empty_memcg(tmp_path):
    _, fams = scrape(tmp_path)
    _, kept = scrape(tmp_path / "keep", ", keep_empty_memcgs: true")
    # /mglrud-fixture holds no pages itself (its children do) in the capture
    assert memcgs(kept) - memcgs(fams) == {"/mglrud-fixture"}
    assert dropped(fams) == {"empty": 1, "max_memcgs": 0}
    assert dropped(kept) == {"empty": 0, "max_memcgs": 0}


def test_cap_keeps_the_largest_and_counts_the_rest(tmp_path):
    snap, fams = scrape(tmp_path, ", max_memcgs_per_target: 2")
    _, full = scrape(tmp_path / "full")
    size = {}
    for s in full["mglrud_memcg_resident_bytes"].samples:
        size[s.labels["memcg"]] = size.get(s.labels["memcg"], 0) + s.value
    largest = sorted(size, key=lambda m: (-size[m], m))[:2]
    assert memcgs(fams) == set(largest)
    assert dropped(fams) == {"empty": 1, "max_memcgs": len(size) - 2}
    # still resolved (and aged): only the export is capped
    assert len(snap.targets[0].memcgs) == len(size) + 1


def test_disable_is_a_rendering_switch(tmp_path):
    snap, fams = scrape(tmp_path, ", disable: [generation, idle_age]")
    _, full = scrape(tmp_path / "full")
    gone = {"mglrud_memcg_generation_bytes", "mglrud_memcg_idle_age_seconds",
            "mglrud_memcg_idle_age_seconds_gcount", "mglrud_memcg_idle_age_seconds_gsum"}
    assert gone <= set(full)
    assert set(full) - set(fams) == gone
    # the Snapshot (and /snapshot.json) still carries the generations
    doc = json.loads(snapshot_json.to_json(snap))
    assert any(v["generations"] for v in doc["memcgs"])


def test_disable_through_the_render_once_cache(tmp_path):
    """exposition.py splits per-scrape families by name: they are there, the disabled ones are not."""
    snap, _ = scrape(tmp_path, ", disable: [generation, generation_age]")
    body, _ = exposition.Exposition(Published(snap), wall=lambda: TAKEN_AT + 3).metrics()
    names = [f.name for f in text_string_to_metric_families(body.decode())]
    assert names[:2] == ["mglrud_build_info", "mglrud_snapshot_age_seconds"]
    assert "mglrud_memcg_resident_bytes" in names
    assert "mglrud_memcg_generation_bytes" not in names and "mglrud_memcg_generation_age_seconds" not in names
    assert body == generate_latest(build_registry(Published(snap), wall=lambda: TAKEN_AT + 3))
