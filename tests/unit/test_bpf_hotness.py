"""The BPF hotness source's math (mglrud/model/hotness.py) and its source/collector, on the host.

Map dumps, smaps, pagemap and zoneinfo in tests/fixtures/bpf/ were captured in
the test guest by tests/vm/capture_bpf_fixtures.py: a workload mapping 64 MiB
of anonymous memory, its first 16 MiB touched in a loop, its memcg aged four
times with mglrud's BPF program attached (one dump after each aging).
"""

import array
import base64
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, captured_roots, copy_root, paths_for
from mglrud.model import hotness as H
from mglrud import snapshot_json as report
from mglrud.collectors import Published, build_registry
from mglrud.config import Bpf, Paths, loads
from mglrud.cycle import Engine
from mglrud.fs import FS, RecordingWriter
from mglrud.sources import bpf_hotness
from mglrud.sources.smaps import parse_smaps
from tests.bpf_replay import ReplayProgram, fixture_proc, replayed_snapshot

BPF = FIXTURES / "bpf"
DUMPS = [json.loads((BPF / f"dump-{i}.json").read_text()) for i in range(4)]
META = DUMPS[0]["meta"]["workload"]
PAGE, SHIFT = 4096, 21
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def workload_regions(start: int, size: int) -> set[int]:
    return set(range(start >> SHIFT, (start + size - 1 >> SHIFT) + 1))


# ---------------------------------------------------------------- raw reads and deltas

def test_dump_combines_cpus_and_counts_every_matched_event():
    for d in DUMPS:
        raw = H.raw_from_dump(d)
        assert raw.matched == sum(c.events for c in raw.cells.values())  # nothing dropped, nothing lost
        assert raw.dropped == 0
        assert sum(c.pages for c in raw.cells.values()) == raw.matched  # all PTE events: 1 page each


def _percpu_values(n, ncpus, slot, seed):
    """n raw per-CPU values as the kernel returns them: struct region_val then padding (garbage here)."""
    import random
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        v = b""
        for _ in range(ncpus):
            v += bpf_hotness.VAL.pack(rnd.randrange(1 << 40), rnd.randrange(1 << 40), rnd.choice([0, rnd.randrange(1 << 63)]))
            v += bytes(rnd.randrange(256) for _ in range(slot - bpf_hotness.VAL.size))
        out.append(v)
    return out


@pytest.mark.parametrize("ncpus,slot", [(1, 24), (2, 24), (3, 32), (64, 24)])
def test_percpu_raw_decoding_equals_summing_each_cpu(ncpus, slot):
    values = _percpu_values(50, ncpus, slot, seed=ncpus)
    old = [H.combine_percpu([bpf_hotness.VAL.unpack(v[i * slot:i * slot + bpf_hotness.VAL.size]) for i in range(ncpus)])
           for v in values]
    keys = [bpf_hotness.KEY.pack(0x7f00 + i, 100 + i % 3, 5, i % 2, (i >> 1) % 2) for i in range(50)]
    # two chunks, as two batched lookups return them
    chunks = [(b"".join(keys[a:b]), b"".join(values[a:b]), b - a) for a, b in ((0, 32), (32, 50))]
    new = bpf_hotness.read_cells(chunks, ncpus, slot)
    assert list(new.values()) == old
    assert list(new) == [H.CellKey(t, m, r, n, H.LRU_NAMES[lru]) for r, t, m, n, lru in map(bpf_hotness.KEY.unpack, keys)]
    assert bpf_hotness.read_cells([], ncpus, slot) == {}


def test_program_dump_reads_a_per_cpu_map_into_the_same_cells():
    from mglrud import bpfsys

    class Map(bpfsys.Map):  # a real Map's decoding, with the bpf(2) reads stood in for
        def __init__(self, items, value_size, ncpus):
            self.fd, self.key_size, self.value_size = -1, bpf_hotness.KEY.size, value_size
            self.percpu, self.ncpus, self.slot, self._items = True, ncpus, (value_size + 7) // 8 * 8, items

        def batches(self):  # as BPF_MAP_LOOKUP_BATCH fills them in, in chunks of 8
            for i in range(0, len(self._items), 8):
                part = self._items[i:i + 8]
                yield b"".join(k for k, _ in part), b"".join(v for _, v in part), len(part)

        def lookup(self, key):
            return bpf_hotness.U64.pack(3) * self.ncpus

    ncpus = 4
    values = _percpu_values(20, ncpus, 24, seed=7)
    keys = [bpf_hotness.KEY.pack(0x7f00 + i, 100 + i % 3, 5, i % 2, (i >> 1) % 2) for i in range(20)]
    prog = object.__new__(bpf_hotness.Program)
    prog.maps = {"heat": Map(list(zip(keys, values)), 24, ncpus), "stats": Map([], 8, ncpus)}
    raw = H.raw_from_dump(prog.dump())
    fast = prog.read()  # what the source reads: the same cells, counts and harvest, decoded by numpy
    assert (fast.cells, fast.events, fast.matched, fast.dropped, fast.harvest) == \
        (raw.cells, raw.events, raw.matched, raw.dropped, raw.harvest)
    assert list(fast.cells) == list(raw.cells)  # in the map's order
    assert (raw.events, raw.matched, raw.dropped) == (12, 12, 12)
    for k, v in zip(keys, values):
        region, tgid, memcg_id, node, lru = bpf_hotness.KEY.unpack(k)
        per_cpu = [bpf_hotness.VAL.unpack(v[i * 24:(i + 1) * 24]) for i in range(ncpus)]
        assert raw.cells[H.CellKey(tgid, memcg_id, region, node, H.LRU_NAMES[lru])] == H.combine_percpu(per_cpu)
    assert len(raw.cells) == 20


def test_first_aging_finds_the_whole_faulted_in_mapping():
    raw = H.raw_from_dump(DUMPS[0])
    mine = workload_regions(META["address"], META["size"])
    pages = sum(c.pages for k, c in raw.cells.items() if k.region in mine and k.tgid == META["pid"])
    # the mapping (every page touched before "ready"), plus interpreter pages in its edge regions
    assert META["size"] // PAGE <= pages <= META["size"] // PAGE + 64


def test_deltas_of_the_last_aging_are_the_hot_block():
    state = {}
    for d in DUMPS:
        state = H.step(state, H.raw_from_dump(d), half_life=10.0)
    hot = workload_regions(META["address"], META["hot"])
    mapping = workload_regions(META["address"], META["size"])
    delta = {k.region: s.delta_pages for k, s in state.items() if s.delta_pages and k.region in mapping}
    # every hot page once; the first and last region may hold interpreter pages too
    assert set(r for r, n in delta.items() if n >= 256) == hot - {min(hot) - 1}
    assert sum(n for r, n in delta.items() if r in hot) >= META["hot"] // PAGE


def test_step_never_goes_down_and_survives_a_deleted_key():
    k = H.CellKey(1, 2, 3, 0, "anon")
    s0 = H.step({}, H.RawRead(0, {k: H.Counts(10, 10, 5)}, 10, 10, 0), 60.0)
    s1 = H.step(s0, H.RawRead(10**9, {k: H.Counts(15, 15, 9)}, 15, 15, 0), 60.0)
    assert (s1[k].delta_pages, s1[k].total_pages) == (5, 15)
    s2 = H.step(s1, H.RawRead(2 * 10**9, {k: H.Counts(3, 3, 11)}, 3, 3, 0), 60.0)  # deleted and re-created
    assert (s2[k].delta_pages, s2[k].total_pages) == (3, 18)
    assert H.step(s2, H.RawRead(3 * 10**9, {}, 0, 0, 0), 60.0) == {}


def test_ewma_of_a_steady_rate_converges_to_it_and_halves_per_half_life():
    k = H.CellKey(1, 2, 3, 0, "anon")
    state, pages = {}, 0
    for i in range(400):  # 100 pages found every 5 s for 2000 s
        pages += 100
        state = H.step(state, H.RawRead(i * 5 * 10**9, {k: H.Counts(pages, pages, i)}, 0, 0, 0), 60.0)
    assert state[k].rate == pytest.approx(20.0, rel=0.05)
    rate = state[k].rate
    state = H.step(state, H.RawRead((399 * 5 + 60) * 10**9, {k: H.Counts(pages, pages, 1)}, 0, 0, 0), 60.0)
    assert state[k].rate == pytest.approx(rate / 2)


def test_idle_age_is_time_since_the_latest_access_found():
    raw = H.raw_from_dump(DUMPS[3])
    state = H.step({}, raw, 60.0)
    hot = workload_regions(META["address"], META["hot"])
    cold = workload_regions(META["address"], META["size"]) - hot - {max(hot) + 1}
    idle = {k.region: H.idle_seconds(s, raw.mono_ns) for k, s in state.items() if k.lru == "anon"}
    # the dump was read 2 s after the latest aging; cold regions were last found 3 agings earlier
    assert max(idle[r] for r in hot if r in idle) < min(idle[r] for r in cold if r in idle)
    assert H.idle_seconds(H.CellState(0, 0, 0, 0.0, 0, 0), 10**9) == math.inf


# ---------------------------------------------------------------- residency

def test_pagemap_residency_of_the_workload_mapping():
    pm = json.loads((BPF / "pagemap.json").read_text())
    entries = memoryview(base64.b64decode(pm["entries_b64"])).cast("Q").tolist()
    zones = H.parse_zoneinfo((BPF / "zoneinfo").read_text())
    assert zones and all(node == 0 for _, _, node in zones)
    vma = H.Vma(pm["address"], pm["address"] + pm["pages"] * PAGE, "", False)
    cells = H.residency(vma, entries, PAGE, SHIFT, H.pfn_node_table(zones))
    assert sum(cells.values()) == pm["pages"]  # touched before "ready": all resident
    assert {(node, lru) for _, node, lru in cells} == {(0, "anon")}
    assert {r for r, _, _ in cells} == workload_regions(pm["address"], pm["pages"] * PAGE)


def test_zoneinfo_node_table():
    node = H.pfn_node_table([(1, 4096, 0), (4096, 100000, 0), (100000, 200000, 1)])
    assert [node(p) for p in (0, 1, 4095, 4096, 99999, 100000, 199999, 200000)] == [-1, 0, 0, 0, 0, 1, 1, -1]


def test_file_pages_of_shmem_are_anon():
    vma, shm = H.Vma(0, 3 * PAGE, "/usr/lib/x", False), H.Vma(0, 3 * PAGE, "/dev/shm/x", True)
    e = [H.PM_PRESENT | H.PM_FILE | 7, H.PM_PRESENT | 8, 0]
    assert H.residency(vma, e, PAGE, SHIFT, lambda p: 0) == {(0, 0, "file"): 1, (0, 0, "anon"): 1}
    assert H.residency(shm, e, PAGE, SHIFT, lambda p: 0) == {(0, 0, "anon"): 2}


# ---------------------------------------------------------------- the address-offset histogram

def test_hot_block_fills_exactly_its_buckets():
    # two mappings with a hole between them: 32 MiB at 1 GiB, 32 MiB at 4 GiB; 2 MiB regions
    spans = H.collapsed_spans([(7, 1 << 30, (1 << 30) + (32 << 20)), (7, 4 << 30, (4 << 30) + (32 << 20))])
    assert spans[-1][3] == 32 << 20  # the hole is collapsed
    hot = {(7, ((4 << 30) >> SHIFT) + i): 1.0 for i in range(4)}  # the first 8 MiB of the second mapping
    h = H.address_histogram(spans, hot, SHIFT, 16)  # 4 MiB buckets
    assert [b for b, v in enumerate(h) if v > 0] == [8, 9]
    assert sum(h) == pytest.approx(4.0)
    ranges = H.bucket_ranges(spans, 16)
    assert ranges[8] == [(7, 4 << 30, (4 << 30) + (4 << 20))]


def test_histogram_from_captured_data_is_hot_where_the_hot_block_is():
    vmas = [(META["pid"], e.start, e.end) for e in parse_smaps((BPF / "smaps").read_text()) if e.rss > 0]
    spans = H.collapsed_spans(vmas)
    state = {}
    for d in DUMPS:
        state = H.step(state, H.raw_from_dump(d), half_life=10.0)
    latest = {}
    for k, s in state.items():
        latest[(k.tgid, k.region)] = latest.get((k.tgid, k.region), 0) + s.delta_pages * PAGE
    n = 64
    h = H.address_histogram(spans, latest, SHIFT, n)
    ranges = H.bucket_ranges(spans, n)
    lo, hi = META["address"], META["address"] + META["hot"]
    inside = [b for b in range(n) if ranges[b] and all(lo <= s and e <= hi for _, s, e in ranges[b])]
    cold = [b for b in range(n) if ranges[b] and all(s >= hi + (2 << 20) and e <= META["address"] + META["size"]
                                                     for _, s, e in ranges[b])]
    assert inside and cold
    assert all(h[b] > 0 for b in inside)
    assert all(h[b] == 0 for b in cold)
    unmapped = sum(v for (t, r), v in latest.items()
                   if not any(s < (r + 1) << SHIFT and e > r << SHIFT for _, s, e, _ in spans))
    assert sum(h) == pytest.approx(sum(latest.values()) - unmapped)  # nothing lost but unmapped regions


# ---------------------------------------------------------------- idle ages at region precision

def _r(pages, found, node=0, lru="anon"):
    """A cell with `pages` resident whose aging passes found (seconds ago, pages)."""
    idle = min((a for a, _ in found), default=math.inf)
    return H.RegionHeat(1, 1, 0, node, lru, pages, 0, 0, 0.0, idle, tuple(found))


def test_idle_histogram_and_cold_bytes_count_pages_not_whole_regions():
    rs = [_r(10, [(0.0, 10)]),              # all hot
          _r(20, [(5.0, 4), (8.0, 6)]),     # 4 pages found 5 s ago, 6 found 8 s ago: 6 taken as warm within 10 s
          _r(30, [(100.0, 30)]),            # found long ago
          _r(40, []),                       # resident, never found
          _r(None, [(3.0, 5)])]             # residency not read: not counted
    buckets, total = H.idle_histogram(rs, (1.0, 6.0, 10.0, 60.0), PAGE)
    assert buckets == [(1.0, 10 * PAGE), (6.0, 14 * PAGE), (10.0, 16 * PAGE), (60.0, 16 * PAGE),
                       (math.inf, 100 * PAGE)]
    assert total == (4 * 5 + 2 * 8 + 30 * 100) * PAGE
    assert H.cold_bytes(rs, 60.0, PAGE) == (100 - 16) * PAGE  # never accessed counts as cold
    assert H.cold_bytes(rs, 5.0, PAGE) == (100 - 10) * PAGE   # "at least 5 s": found exactly 5 s ago is cold
    assert H.cold_bytes(rs, 0.0, PAGE) == 100 * PAGE


def test_a_region_with_a_few_hot_pages_is_mostly_cold():
    # the scattered pattern: 8 hot pages in a 2 MiB region of 512 resident pages
    r = _r(512, [(1.0, 8), (4.0, 8), (7.0, 8)])
    assert H.cold_bytes([r], 3.0, PAGE) == 504 * PAGE


# ---------------------------------------------------------------- the source, with the captured dumps

def test_source_replays_captured_dumps(tmp_path):
    cfg = loads("bpf: {half_life: 10s, heat_buckets: 16}\ntargets: [{name: w, pid: %d}, {name: m, memcg: /mglrud-capture}]"
                % META["pid"])
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=ReplayProgram)
    assert src.start() and src.status().up
    for _ in DUMPS:
        data = src.cycle(cfg.targets, {"/mglrud-capture": META["memcg_id"]})
    assert src.program.targets[-1] == ({META["pid"]}, {META["memcg_id"]})
    w, m = data.targets
    assert len(w.buckets) == 16 and m.buckets == ()
    total = dict(((n, l), b) for n, l, b in w.accessed_bytes_total)
    raw = H.raw_from_dump(DUMPS[-1])
    assert total[(0, "anon")] == sum(c.pages for k, c in raw.cells.items() if k.lru == "anon") * PAGE
    assert data.matched == raw.matched and data.dropped == 0
    assert src.program.deleted == []


def test_source_down_with_the_reason_when_the_program_cannot_load(tmp_path):
    def broken(cfg, fs):
        raise bpf_hotness.Unavailable("bcc could not compile or load x.bpf.c: boom")
    src = bpf_hotness.BpfHotnessSource(Bpf(), FS(Paths(procfs=str(tmp_path))), loader=broken)
    assert not src.start()
    st = src.status()
    assert (st.name, st.up) == ("bpf", False) and "boom" in st.reason
    assert src.cycle((), {}) is None


def test_program_refuses_a_kernel_without_the_tracepoint(tmp_path):
    with pytest.raises(bpf_hotness.Unavailable, match="mm_vmscan_lru_gen_young"):
        bpf_hotness.Program(Bpf(), FS(Paths(tracefs=str(tmp_path), debugfs=str(tmp_path))))


def test_a_v2_kernel_with_regions_under_a_pte_table_is_told_the_region_size(tmp_path):
    """The series' main patch (the range event) without its debugging patch (the per-entry
    event), bpf.region_size 1 MiB, and no probe either: the reason names the region size, not a
    missing tracepoint (review)."""
    (tmp_path / "events" / "vmscan" / "mm_vmscan_lru_gen_young_range").mkdir(parents=True)
    fs = FS(Paths(tracefs=str(tmp_path), debugfs=str(tmp_path), procfs=str(tmp_path), sysfs=str(tmp_path)))
    with pytest.raises(bpf_hotness.Unavailable) as e:
        bpf_hotness.Program(Bpf(region_size=1 << 20), fs)
    assert "bpf.region_size" in str(e.value) and "2 MiB" in str(e.value), str(e.value)
    assert "lacks mglrud's tracepoint" not in str(e.value)


def test_cflags_carry_the_constants():
    assert bpf_hotness.cflags(Bpf(region_size=1 << 20, max_regions=4096))[:2] == \
        ["-DREGION_SHIFT=20", "-DMAX_REGIONS=4096"]
    assert bpf_hotness.cflags(Bpf(), range_event=True)[-1] == "-DUSE_RANGE_EVENT"


def test_the_range_event_is_preferred_when_regions_cover_a_pte_table(tmp_path):
    for e in ("mm_vmscan_lru_gen_young", "mm_vmscan_lru_gen_young_range"):
        (tmp_path / "events" / "vmscan" / e).mkdir(parents=True)
    fs = FS(Paths(tracefs=str(tmp_path)))
    assert bpf_hotness.pick_event(Bpf(), fs) == "mm_vmscan_lru_gen_young_range"
    assert bpf_hotness.pick_event(Bpf(region_size=1 << 20), fs) == "mm_vmscan_lru_gen_young"
    (tmp_path / "events" / "vmscan" / "mm_vmscan_lru_gen_young_range").rmdir()
    assert bpf_hotness.pick_event(Bpf(), fs) == "mm_vmscan_lru_gen_young"
    assert bpf_hotness.DEFAULT_PROGRAM.is_file()


# ---------------------------------------------------------------- engine, metrics, JSON

ROOTS = captured_roots()


@pytest.mark.skipif(not ROOTS, reason="no captured fixture roots")
def test_bpf_named_on_a_stock_kernel_is_down_and_lru_gen_keeps_flowing(tmp_path):
    root = copy_root(ROOTS[0], tmp_path / "root")
    paths = paths_for(root)
    cfg = loads("sources: [bpf, lru_gen]\ntargets: [{name: all, memcg: '/**'}]\npaths: {"
                + ", ".join(f"{k}: '{v}'" for k, v in paths.items()) + "}\n")
    snap = Engine(cfg, writer=RecordingWriter()).cycle(age=False)
    status = {s.name: s for s in snap.sources}
    assert status["lru_gen"].up and snap.lruvecs
    assert not status["bpf"].up and "mm_vmscan_lru_gen_young" in status["bpf"].reason
    text = generate_latest(build_registry(Published(snap))).decode()
    assert 'mglrud_source_up{source="bpf"} 0.0' in text
    assert 'mglrud_source_up{source="lru_gen"} 1.0' in text


def test_metrics_are_bounded_and_promtool_clean(tmp_path):
    snap, data = replayed_snapshot(tmp_path)
    text = generate_latest(build_registry(Published(snap))).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    offset = fams["mglrud_target_access_offset_ratio"]
    assert {s.labels["target"] for s in offset.samples} == {"w"}
    assert len([s for s in offset.samples if s.name.endswith("_bucket")]) == 16
    les = [s.labels["le"] for s in offset.samples if s.name.endswith("_bucket")]
    assert les[-1] == "+Inf" and les[0] == "0.0625"
    assert all("pid" not in s.labels and "region" not in s.labels for f in fams.values() for s in f.samples)
    acc = [s for s in fams["mglrud_target_accessed_bytes"].samples if s.name.endswith("_total")]
    assert {(s.labels["target"], s.labels["lru"]) for s in acc} >= {("w", "anon"), ("m", "anon")}
    if shutil.which(PROMTOOL):
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr


def test_snapshot_json_carries_every_region(tmp_path):
    snap, data = replayed_snapshot(tmp_path)
    doc = json.loads(report.to_json(snap))["hotness"]
    assert doc["region_size"] == 2 << 20
    w = next(t for t in doc["targets"] if t["name"] == "w")
    assert len(w["regions"]) == len(data.targets[0].regions) > 30
    assert len(w["buckets"]) == 16 and all("ranges" in b for b in w["buckets"])


@pytest.mark.parametrize("nodes,want", [(1, 381), (2, 491)])
def test_series_count_with_the_example_config(nodes, want):
    """The count docs/metrics.md states: fixed by the config, whatever the processes and regions."""
    from mglrud.collectors import bpf as bpf_families
    from mglrud.config import load
    from mglrud.model import Snapshot

    cfg = load(str(Path(__file__).resolve().parents[2] / "config.example.yaml"))
    targets = []
    for t in cfg.targets:
        regions = tuple(H.RegionHeat(100 + i, 5, (1000 + i) << SHIFT, n, lru, 3, 1, 1, 1.0, float(i))
                        for i in range(500) for n in range(nodes) for lru in ("anon", "file"))
        buckets = tuple(H.HeatBucket(((1, 0, 1),), 1.0, 1) for _ in range(cfg.bpf.heat_buckets)) \
            if t.kind != "memcg" else ()
        targets.append(H.TargetHeat(t.name, t.kind, (1,), (5,), regions, buckets,
                                    tuple((n, l, 1) for n in range(nodes) for l in ("anon", "file"))))
    data = H.HotnessData(cfg.bpf.region_size, cfg.bpf.half_life, PAGE, tuple(targets))
    snap = Snapshot(taken_at=0.0, page_size=PAGE, cold_thresholds=cfg.metrics.cold_thresholds,
                    idle_age_buckets=cfg.metrics.buckets, hotness=data)
    n = sum(len(f.samples) for f in bpf_families.families(snap))
    assert n == want


def test_keys_of_processes_no_longer_targeted_are_deleted_from_the_map(tmp_path):
    cfg = loads("targets: [{name: other, pid: 999999}]")
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=ReplayProgram)
    src.start()
    data = src.cycle(cfg.targets, {})
    raw = H.raw_from_dump(DUMPS[0])
    assert set(src.program.deleted) == set(raw.cells) and data.map_entries == 0
    assert src.state == {}


def test_one_node_residency_fast_path_agrees_with_the_per_page_one():
    pm = json.loads((BPF / "pagemap.json").read_text())
    data = base64.b64decode(pm["entries_b64"])
    entries = memoryview(data).cast("Q").tolist()
    # make it interesting: some pages absent, some file, a region boundary inside the range
    entries[5] = 0
    entries[700] |= H.PM_FILE
    data = memoryview(__import__("array").array("Q", entries)).tobytes()
    start = pm["address"] + 3 * PAGE
    for shmem in (False, True):
        vma = H.Vma(start, start + len(entries) * PAGE, "", shmem)
        assert H.residency_one_node(vma, data, PAGE, SHIFT, 0) == \
            H.residency(vma, entries, PAGE, SHIFT, lambda pfn: 0)


RANGE = BPF / "range"


@pytest.mark.skipif(not (RANGE / "dump-3.json").exists(), reason="no range-event capture")
def test_range_event_capture_counts_pages_and_only_the_hot_block_after_the_first_aging():
    dumps = [json.loads((RANGE / f"dump-{i}.json").read_text()) for i in range(4)]
    meta = dumps[0]["meta"]
    assert meta["event"] == "mm_vmscan_lru_gen_young_range"
    w = meta["workload"]
    mapping = workload_regions(w["address"], w["size"])
    hot = workload_regions(w["address"], w["hot"])
    state = H.step({}, H.raw_from_dump(dumps[0]), 60.0)
    first = sum(s.delta_pages for k, s in state.items() if k.region in mapping and k.tgid == w["pid"])
    assert first >= w["size"] // PAGE  # one event per PTE table, but every young page counted
    for d in dumps[1:]:
        raw = H.raw_from_dump(d)
        assert raw.matched < 64 and raw.dropped == 0  # events are ranges, not pages
        state = H.step(state, raw, 60.0)
        touched = {k.region for k, s in state.items() if s.delta_pages and k.region in mapping}
        assert touched <= hot, sorted(touched - hot)


def test_counts_of_a_process_that_exits_between_two_reads_are_kept(tmp_path):
    """What the kernel counted for a process after the previous read (reclaim's look-around, an aging
    by someone else) reaches its targets' accessed bytes although it has exited by the next read;
    then its cells leave the map, the snapshot and the state."""
    cfg = loads("targets: [{name: w, pid: %d}, {name: m, memcg: /mglrud-capture}]" % META["pid"])
    fs = fixture_proc(tmp_path)
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fs, loader=ReplayProgram)
    src.start()
    index = {"/mglrud-capture": META["memcg_id"]}
    src.cycle(cfg.targets, index)
    shutil.rmtree(tmp_path / "proc" / str(META["pid"]))  # the process exits
    data = src.cycle(cfg.targets, index)
    pid_pages = sum(c.pages for k, c in H.raw_from_dump(DUMPS[1]).cells.items() if k.tgid == META["pid"])
    for t in data.targets:
        assert sum(b for _, _, b in t.accessed_bytes_total) == pid_pages * PAGE, t.name
        assert not any(r.tgid == META["pid"] for r in t.regions), t.name
    assert {k.tgid for k in src.program.deleted} >= {META["pid"]}
    assert not any(k.tgid == META["pid"] for k in src.state)
    nxt = dict(src.program.dumps[0])  # the map as the kernel keeps it: without the deleted cells
    nxt["heat"] = [e for e in nxt["heat"] if e["tgid"] != META["pid"]]
    src.program.dumps[0] = nxt
    data = src.cycle(cfg.targets, index)  # and nothing is counted twice
    assert all(sum(b for _, _, b in t.accessed_bytes_total) == pid_pages * PAGE for t in data.targets)


# ---------------------------------------------------------------- the loader child (mglrud/bpf_loader.py)

FAKE_BCC = '''
import atexit, os
MARK = os.environ["FAKE_BCC_MARK"]

class _Table:
    def __init__(self, name):
        self.map_fd = os.memfd_create(name)
        os.write(self.map_fd, name.encode())

class _Fn:
    def __init__(self):
        self.fd = os.memfd_create("prog")

class BPF:
    def __init__(self, src_file, cflags):
        if b"broken" in src_file:
            raise Exception("Failed to compile BPF module " + repr(src_file))
        self.tracepoint_fds = {b"vmscan:mm_vmscan_lru_gen_young_range": os.memfd_create("tracepoint")}
        self.funcs = {b"tracepoint__vmscan__x": _Fn()}
        atexit.register(self.cleanup)

    def num_open_tracepoints(self):
        return len(self.tracepoint_fds)

    def __getitem__(self, name):
        return _Table(name)

    def cleanup(self):  # bcc's would disable the perf event the daemon now holds
        open(MARK, "w").write("cleaned up")
'''


@pytest.fixture
def fake_bcc(tmp_path, monkeypatch):
    (tmp_path / "fakebcc" / "bcc").mkdir(parents=True)
    (tmp_path / "fakebcc" / "bcc" / "__init__.py").write_text(FAKE_BCC)
    monkeypatch.setenv("FAKE_BCC_MARK", str(tmp_path / "mark"))
    return tmp_path  # the loader child ignores PYTHONPATH (-I): tests pass extra_path


def test_loader_child_hands_over_the_descriptors_and_skips_bcc_cleanup(fake_bcc):
    from mglrud import bpf_loader

    maps, held, seconds = bpf_loader.load(fake_bcc / "hotness.bpf.c", ["-DX=1"], "mm_vmscan_lru_gen_young_range",
                                          bpf_hotness.MAPS, timeout=60, extra_path=(str(fake_bcc / "fakebcc"),))
    try:
        assert list(maps) == bpf_hotness.MAPS and len(held) == 2 and seconds >= 0
        for name, fd in maps.items():
            assert os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{name}")
            assert os.pread(fd, 64, 0) == name.encode()
        assert {os.readlink(f"/proc/self/fd/{fd}").split()[0] for fd in held} == {"/memfd:tracepoint", "/memfd:prog"}
        assert not (fake_bcc / "mark").exists(), "the child ran bcc's cleanup: it would detach the program"
    finally:
        for fd in list(maps.values()) + held:
            os.close(fd)


def test_loader_child_reports_a_compile_error(fake_bcc):
    from mglrud import bpf_loader

    with pytest.raises(bpf_loader.LoadError, match=r"bcc could not compile or load .*broken\.bpf\.c"):
        bpf_loader.load(fake_bcc / "broken.bpf.c", [], "mm_vmscan_lru_gen_young_range", bpf_hotness.MAPS, timeout=60,
                        extra_path=(str(fake_bcc / "fakebcc"),))


def test_possible_cpus_is_the_highest_plus_one(tmp_path):
    from mglrud import bpfsys

    for text, want in (("0\n", 1), ("0-1\n", 2), ("0-3,8-11\n", 12)):
        (tmp_path / "possible").write_text(text)
        assert bpfsys.possible_cpus(str(tmp_path / "possible")) == want


def test_damon_bench_refuses_to_run_outside_the_test_guest(monkeypatch):
    """bench/damon_compare.py must never write /sys/kernel/mm/damon on the host (which uses DAMON itself)."""
    import sys as _sys
    from pathlib import Path as _Path
    _sys.path.insert(0, str(_Path(__file__).resolve().parents[2] / "bench"))
    import damon_compare

    touched = []
    real_write, real_read = _Path.write_text, _Path.read_text

    def guard_write(self, *a, **kw):
        if "damon" in str(self):
            touched.append(str(self))
            raise AssertionError(f"wrote {self}")
        return real_write(self, *a, **kw)

    def guard_read(self, *a, **kw):
        if "damon" in str(self):
            touched.append(str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(_Path, "write_text", guard_write)
    monkeypatch.setattr(_Path, "read_text", guard_read)
    uname = os.uname()
    fake = type(uname)((uname.sysname, uname.nodename, "6.18.44-host", uname.version, uname.machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    monkeypatch.setattr(_sys, "argv", ["damon_compare.py"])
    assert "not the project's test kernel" in damon_compare.not_the_test_guest()
    assert damon_compare.main() == 2
    with pytest.raises(SystemExit, match="refusing to touch DAMON"):
        damon_compare.Damon(1, 5000, 100000, 1000000, 10, 1000)
    assert touched == []


@pytest.mark.parametrize("shmem", [False, True])
def test_residency_with_a_zone_table_equals_looking_up_each_page(shmem):
    # pfn_node_table()'s node_of takes residency()'s vectorised path; any other callable the
    # per-page one: both must count the same pages in the same (region, node, lru) cells
    import random
    rnd = random.Random(int(shmem))
    node_of = H.pfn_node_table([(1, 4096, 0), (4096, 100000, 0), (100000, 200000, 1), (300000, 400000, 3)])
    pfns = [0, 5, 4096, 150000, 250000, 350000, 10**6]
    entries = [rnd.choice([0, H.PM_PRESENT, H.PM_PRESENT | H.PM_FILE]) | rnd.choice(pfns + [rnd.randrange(1 << 55)])
               for _ in range(5000)]
    for start in (0x7f0000000000, 0x400000 + 3 * PAGE):
        vma = H.Vma(start, start + len(entries) * PAGE, "x", shmem)
        fast = H.residency(vma, entries, PAGE, SHIFT, node_of)
        assert fast == H.residency(vma, entries, PAGE, SHIFT, lambda pfn: node_of(pfn))
        raw = array.array("Q", entries).tobytes()  # what read_residency() passes: pagemap's bytes
        assert H.residency(vma, raw, PAGE, SHIFT, node_of) == fast
        assert H.residency(vma, raw, PAGE, SHIFT, lambda pfn: node_of(pfn)) == fast
        assert sum(fast.values()) == sum(1 for e in entries if e & H.PM_PRESENT)
        assert {n for _, n, _ in fast} == {-1, 0, 1, 3}
    assert H.residency(H.Vma(0, PAGE, "", shmem), [0], PAGE, SHIFT, node_of) == {}


def test_probe_names_numpy_when_it_is_missing(tmp_path, monkeypatch):
    # the source decodes its maps and pagemap with numpy (Program.read, model/residency.py)
    import importlib.util

    from mglrud.config import Paths
    from mglrud.fs import FS
    (tmp_path / "tracing" / "events" / "vmscan" / "mm_vmscan_lru_gen_young").mkdir(parents=True)
    fs = FS(Paths(tracefs=str(tmp_path / "tracing")))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numpy" else real(name, *a))
    p = bpf_hotness.probe(fs)
    assert not p.usable and "apt install python3-numpy" in p.detail, p


def test_set_targets_moves_the_generation_that_drops_the_probes_mm_cache():
    """Each set_targets() (once a cycle) loads the targets, then writes config[CONFIG_TARGETS_GEN]
    anew: the probe's per-CPU mm cache (bpf/hotness.bpf.c mm_cache) holds for one generation."""
    class Table:
        def __init__(self, items=()):
            self.items, self.log = dict(items), []

        def keys(self):
            return list(self.items)

        def update(self, k, v):
            self.items[k] = v
            self.log.append(("update", k, v))

        def delete(self, k):
            del self.items[k]
            self.log.append(("delete", k))

    u32 = bpf_hotness.U32
    prog = object.__new__(bpf_hotness.Program)
    prog.maps = {"config": Table(), "target_tgids": Table({u32.pack(7): b"\x01"}), "target_memcgs": Table()}
    prog.self_tgid = 4242
    prog.set_targets({8}, {3})
    config = prog.maps["config"]
    assert config.items == {u32.pack(0): u32.pack(4242), u32.pack(1): u32.pack(1)}
    assert set(prog.maps["target_tgids"].items) == {u32.pack(8)} and set(prog.maps["target_memcgs"].items) == {u32.pack(3)}
    prog.set_targets({8}, {3})  # the same targets: a new generation all the same (a task may have moved memcg)
    assert config.items[u32.pack(1)] == u32.pack(2)
    # the generation is written last, after the target maps, so a cache refilled from it sees the new targets
    assert config.log[-1] == ("update", u32.pack(1), u32.pack(2))


def test_own_tgid_is_read_from_the_procfs_of_the_targets_not_os_getpid(tmp_path):
    """In a container of its own PID namespace (deploy/container: the host's /proc at /host/proc)
    os.getpid() is 1, the host's init; the program compares the host's tgids, so config's
    SELF_TGID is /proc/self of that procfs (review: with os.getpid() no harvest was the aging's
    and the probe's heat stayed empty there)."""
    from mglrud.config import Paths
    from mglrud.fs import FS
    from mglrud.sources.bpf_program import own_tgid
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "self").symlink_to("4242")
    assert own_tgid(FS(Paths(procfs=str(tmp_path / "proc")))) == 4242
    assert own_tgid(FS(Paths(procfs=str(tmp_path / "none")))) == os.getpid()  # unreadable: our own
    assert own_tgid(FS(Paths(procfs="/proc"))) == os.getpid()
