"""model/heat_columns.py (the BPF source's per-cell state as numpy columns) against the reference,
model/hotness.py's step() on one object per cell: the same state, float for float, over reads
that grow, keep, lose and re-create cells, and beyond HISTORY finds."""

import random

import pytest

from mglrud.model import heat_columns as C  # numpy: scripts/install-deps installs it
from mglrud.model import hotness as H


def _reads(seed: int, n: int = 40):
    rnd = random.Random(seed)
    keys = [H.CellKey(100 + rnd.randrange(4), rnd.choice((5, 9)), 0x7f000 + rnd.randrange(30), rnd.randrange(2),
                      rnd.choice(H.LRU_NAMES)) for _ in range(200)]
    keys = list(dict.fromkeys(keys))
    counts: dict = {}
    now = 10**12
    for _ in range(n):
        now += rnd.choice((10**9, 2 * 10**9, 1234567891))
        for k in keys:
            r = rnd.random()
            if r < 0.3:
                p, _, t = counts.get(k, (0, 0, 0))
                # a count that grows with no later timestamp (another CPU's older one): a tie of two finds
                counts[k] = (p + rnd.randrange(1, 500), 0, t if t and rnd.random() < 0.3 else now - rnd.randrange(10**9))
            elif r < 0.33:
                counts.pop(k, None)  # deleted from the map
            elif r < 0.34 and k in counts:
                counts[k] = (1, 0, now - 3)  # deleted and re-created: a count lower than before
        order = list(counts)
        rnd.shuffle(order)  # a hash map's order changes between reads
        yield H.RawRead(now, {k: H.Counts(*counts[k]) for k in order}, 0, 0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_step_equals_the_per_cell_step(seed):
    ref, cols = {}, C.State.empty()
    for raw in _reads(seed):
        ref = H.step(ref, raw, 30.0)
        cols = C.step(cols, C.Cells.from_dict(raw.cells), raw.mono_ns, 30.0)
        got = cols.as_dict()
        assert list(got) == list(ref)  # the read's order
        assert got == ref  # every field, floats bit for bit
    assert max(len(s.history) for s in ref.values()) == H.HISTORY  # the history wrapped


def test_a_restart_forgets_counts_and_keeps_pass_tagged_finds():
    k = H.CellKey(1, 5, 7, 0, "anon")
    cols = C.step(C.State.empty(), C.Cells.from_dict({k: H.Counts(10, 0, 5)}), 100, 30.0)
    cols = C.tag_finds(cols, {5: H.AgingPass(5, 42, 1.0, True)})
    assert cols.found_in_dict() == {k: ((42, 10),)}
    cols = C.step(cols.forget_counts(), C.Cells.from_dict({k: H.Counts(3, 0, 9)}), 200, 30.0)
    assert cols.as_dict() == H.step({}, H.RawRead(200, {k: H.Counts(3, 0, 9)}, 0, 0, 0), 30.0)
    assert cols.found_in_dict() == {k: ((42, 10),)}


def test_match_gives_each_repeated_key_the_same_row():
    import numpy as np

    a_region, a_word = np.array([3, 1, 2], np.uint64), np.array([7, 7, 7], np.uint64)
    b_region, b_word = np.array([2, 2, 9, 3], np.uint64), np.array([7, 7, 7, 8], np.uint64)
    assert C.match(a_region, a_word, b_region, b_word).tolist() == [2, 2, -1, -1]


class _Replay:
    """A program stand-in whose dumps are the reads of _reads(): cells of two processes."""

    def __init__(self, reads):
        self.reads, self.event, self.compile_seconds = reads, "x", 0.0

    def set_targets(self, tgids, ids):
        pass

    def dump(self):
        raw = next(self.reads)
        return {"mono_ns": raw.mono_ns, "stats": {"events": [0], "matched": [0], "dropped": [0]},
                "heat": [{"tgid": k.tgid, "memcg_id": k.memcg_id, "region": k.region, "node": k.node,
                          "lru": H.LRU_NAMES.index(k.lru), "percpu": [list(c)]} for k, c in raw.cells.items()]}

    def delete(self, keys):
        pass

    def close(self):
        pass


def test_the_metrics_of_the_columns_equal_those_of_the_region_objects(tmp_path, monkeypatch):
    """collectors/bpf.py reads RegionColumns' columns (idle_and_cold()); the same snapshot with its
    regions made into RegionHeat objects takes hotness.idle_histogram() and cold_bytes(): the
    samples are the same, sums of floats included. Finds of one cell often share a time (the
    reads repeat last_ns), which is where the ties of sorted(found) are."""
    import dataclasses

    from mglrud.collectors import bpf as families
    from mglrud.config import loads
    from mglrud.fs import FS
    from mglrud.model import Snapshot
    from mglrud.sources import bpf_heat, bpf_hotness

    def residency(fs, tgid, shift, page, nodes, status_of=None):  # pagemap's counts, some never found
        rnd = random.Random(tgid)
        return [(0x7f000 << shift, 0x7f040 << shift)], {
            (0x7f000 + r, n, lru): rnd.randrange(1, 900) for r in range(36) for n in (0, 1) for lru in H.LRU_NAMES
            if rnd.random() < 0.8}, ""

    monkeypatch.setattr(bpf_heat, "read_residency", residency)
    for t in range(100, 104):
        (tmp_path / "proc" / str(t)).mkdir(parents=True)
    cfg = loads("metrics: {cold_thresholds: [1s, 3s, 10s], idle_age_buckets: [1s, 2s, 5s, 30s]}\n"
                "targets: [{name: m, memcg: /m}, {name: p, pid: 101}]\n"
                f"paths: {{procfs: '{tmp_path / 'proc'}'}}\n")
    reads = _reads(4, n=30)
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, FS(cfg.paths), loader=lambda c, f: _Replay(reads))
    src.start()
    compared = 0
    for _ in range(30):
        data = src.cycle(cfg.targets, {"/m": 5})
        snaps = [Snapshot(taken_at=0.0, page_size=4096, cold_thresholds=cfg.metrics.cold_thresholds,
                          idle_age_buckets=cfg.metrics.buckets, hotness=d) for d in
                 (data, dataclasses.replace(data, targets=tuple(dataclasses.replace(t, regions=tuple(t.regions))
                                                                for t in data.targets)))]
        assert hasattr(data.targets[0].regions, "idle_and_cold") and type(snaps[1].hotness.targets[0].regions) is tuple
        got, want = ([(f.name, f.samples) for f in families.families(s)] for s in snaps)
        assert got == want
        compared += sum(len(t.regions) for t in data.targets)
    assert compared > 1000
    assert sum(1 for t in data.targets for r in t.regions if r.resident_pages and r.found) > 30
    ties = [r for t in data.targets for r in t.regions if len({a for a, _ in r.found}) < len(r.found)]
    assert ties, "no cell with two finds of the same age: the ties are not tested"


def test_resident_cells_with_a_state_of_no_rows_render():
    """A reload that restarts the program leaves a state with no rows but history columns (width
    > 0); a region only resident (never counted: src_row -1) must render, not index row 0 of an
    empty array (seen in the guest: IndexError in every scrape after `kill -HUP`)."""
    import numpy as np

    z, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    w = np.zeros((0, 3), np.int64)
    st = C.State(C.empty_cells(), z, z, z, f, z, z, w, w, z, w, w, z)
    one = lambda v, t=np.int64: np.array([v], t)  # noqa: E731
    cols = {"tgid": one(7), "memcg_id": one(1), "start": one(1 << 21), "node": one(0), "lru": one(0),
            "res": one(100), "delta": one(0), "total": one(0), "rate": one(0.0, np.float64), "idle": one(-1.0, np.float64)}
    rc = C.RegionColumns(cols, st, one(-1), 10**9, True)
    [r] = list(rc)
    assert (r.tgid, r.resident_pages, r.found, r.found_in) == (7, 100, (), ())
    per_pair = rc.idle_and_cold((1.0, 10.0), (5.0,), 4096)
    assert len(per_pair) == 1, per_pair  # one (node, lru) pair, its buckets computed
