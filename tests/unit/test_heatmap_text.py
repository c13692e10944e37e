"""The text heatmap (mglrud/render/heatmap.py) from captured data: the golden /proc snapshot and the BPF dumps."""

import json

import pytest

from fixture_snapshots import procfs_snapshot
from mglrud import snapshot_json
from mglrud.config import loads
from mglrud.model import Snapshot
from mglrud.render import heatmap as HM
from mglrud.sources import bpf_hotness
from tests.bpf_replay import DUMPS, META, PAGE, ReplayProgram, fixture_proc

PROCFS = {"taken_at": 100.0, "procfs": procfs_snapshot()}
PID = PROCFS["procfs"]["processes"][0]["pid"]


def _first_interval(snap):
    """The same snapshot as the daemon's first read: nothing measured yet."""
    s = json.loads(json.dumps(snap))
    s["taken_at"] -= 30
    for p in s["procfs"]["processes"]:
        for m in p["mappings"]:
            m["accessed_bytes"] = m["idle_seconds"] = None
    return s


def _row(g, pid, start):
    return next(c for k, c in zip(g.rows, g.cells) if (k.pid, k.start) == (pid, start))


def test_procfs_rows_are_mappings_by_address_and_columns_snapshots():
    g = HM.grid([_first_interval(PROCFS), PROCFS], pid=PID)
    assert g.times == (70.0, 100.0)
    assert [k.start for k in g.rows] == sorted(k.start for k in g.rows)
    assert {k.pid for k in g.rows} == {PID}
    hot, cold = _row(g, PID, 0x7fb73b0bf000), _row(g, PID, 0x7fb73b4c0000)
    assert hot[0].heat is None and hot[1].heat == pytest.approx(3993600 / 4194304)
    assert cold[1].heat == 0.0 and cold[1].lru == "anon" and cold[1].node == 0


def test_text_shows_the_hot_block_hot_and_the_cold_one_cold():
    text = HM.render(HM.grid([_first_interval(PROCFS), PROCFS], pid=PID))
    lines = {l.split()[0]: l for l in text.splitlines()[:-1]}
    assert lines["0x7fb73b0bf000"].endswith("|?@|") and "[anon]" in lines["0x7fb73b0bf000"]
    assert lines["0x7fb73b4c0000"].endswith("|?.|")
    assert lines["0x7fb73ac00000"].split()[1] == "/tmp/tmp4hc0cqew/data"
    assert text.splitlines()[-1].startswith("heat: ")


def test_overlays_and_column_window():
    g = HM.grid([PROCFS], pid=PID)
    node = HM.render(g, "node").splitlines()
    assert all(l.endswith("|0|") for l in node[:-1])  # the capture ran on one node
    lru = {l.split()[0]: l for l in HM.render(g, "lru").splitlines()[:-1]}
    assert lru["0x7fb73a800000"].endswith("|a|")  # memfd is shmem: anon LRU
    assert lru["0x7fb73ac00000"].endswith("|f|")
    assert HM.render(HM.grid([PROCFS] * 5, pid=PID), columns=2).splitlines()[0].endswith("|..|")
    with pytest.raises(ValueError, match="unknown overlay 'x'"):
        HM.render(g, "x")


def test_a_mapping_that_goes_away_leaves_blank_cells():
    later = json.loads(json.dumps(PROCFS))
    later["procfs"]["processes"][0]["mappings"] = [m for m in later["procfs"]["processes"][0]["mappings"]
                                                   if m["start"] != "0x7fb73b4c0000"]
    text = HM.render(HM.grid([PROCFS, later], pid=PID))
    assert next(l for l in text.splitlines() if l.startswith("0x7fb73b4c0000")).endswith("|. |")


def _bpf_series(tmp_path):
    cfg = loads("bpf: {half_life: 10s, heat_buckets: 16}\nmetrics: {cold_thresholds: [1s, 2s]}\n"
                "aging: {interval: 2s}\ntargets: [{name: w, pid: %d}]" % META["pid"])
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=ReplayProgram)
    src.start()
    out = []
    for i, _ in enumerate(DUMPS):
        data = src.cycle(cfg.targets, {})
        out.append(snapshot_json.to_dict(Snapshot(taken_at=1.8e9 + 2 * i, page_size=PAGE,
                                                  cold_thresholds=cfg.metrics.cold_thresholds,
                                                  idle_age_buckets=cfg.metrics.buckets, hotness=data)))
    return out


def test_bpf_rows_inside_the_hot_block_are_hot_and_past_it_cold(tmp_path):
    g = HM.grid(_bpf_series(tmp_path), pid=META["pid"])
    size = 2 << 20
    lo, hi, end = META["address"], META["address"] + META["hot"], META["address"] + META["size"]
    inside = [c for k, c in zip(g.rows, g.cells) if lo <= k.start and k.end <= hi]
    cold = [c for k, c in zip(g.rows, g.cells) if hi + size <= k.start and k.end <= end]
    assert inside and cold
    assert all(c[-1].heat == 1.0 for c in inside)  # the last aging found every page of the hot block
    assert all(c[-1] is None or c[-1].heat == 0.0 for c in cold)
    text = HM.render(g)
    assert all(l.split()[1] == "?" for l in text.splitlines()[:-1])  # no procfs part to name mappings
    assert any(l.endswith("@|") for l in text.splitlines())
