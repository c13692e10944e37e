"""Heat per aging pass (issue 20): the BPF source run as the daemon runs it, with a snapshot
interval shorter than the aging interval, and with aging running late, through /snapshot.json,
the heatmap's History and its aggregation columns.

A stand-in for the BPF program counts what a simulated aging pass finds; a stand-in lru_gen
read says which passes ran (max_seq moves, the youngest generation's age). The workload: four
hot regions found entirely by every pass, four cold regions found only by the first pass seen
(which finds everything touched since the process started: the fill)."""

import json

from mglrud import snapshot_json
from mglrud.config import loads
from mglrud.model import Snapshot
from mglrud.model.lru_gen import GenHistogram, Generation
from mglrud.render import heatmap as HM
from mglrud.sources import bpf_hotness
from mglrud.tui.feeds import History
from tests.bpf_replay import META, PAGE, fixture_proc

PID, MEMCG = META["pid"], META["memcg_id"]
SHIFT = 21
BASE = META["address"] >> SHIFT  # the workload's mapping, 2 MiB regions
HOT = [BASE + i for i in range(4)]
COLD = [BASE + 10 + i for i in range(4)]
T0 = 1.8e9  # wall time of the first snapshot


class Kernel:
    """The BPF map and lru_gen of one memcg: `age(at)` is an aging pass at wall time `at`."""

    def __init__(self):
        self.counts = {r: 0 for r in HOT + COLD}
        self.last_ns = {r: 0 for r in HOT + COLD}
        self.seq, self.birth, self.passes = 4, T0 - 100.0, 0
        self.now = T0

    def age(self, at: float) -> None:
        first = self.passes == 0
        for r in HOT + (COLD if first else []):  # the first walk finds the whole fill
            self.counts[r] += 512
            self.last_ns[r] = int((at - T0 + 1000) * 1e9)
        self.seq, self.birth, self.passes = self.seq + 1, at, self.passes + 1

    def lruvecs(self):
        return (GenHistogram(MEMCG, "/mglrud-capture", 0,
                             (Generation(self.seq - 1, self.now - self.birth + 5, 1, 1),
                              Generation(self.seq, self.now - self.birth, 1, 1))),)

    # the BPF program's side (bpf_hotness.Program's interface)
    def program(self, cfg, fs):
        return self

    def set_targets(self, tgids, memcg_ids):
        pass

    def dump(self):
        heat = [{"tgid": PID, "memcg_id": MEMCG, "region": r, "node": 0, "lru": 0,
                 "percpu": [[n, n, self.last_ns[r]]]} for r, n in self.counts.items() if n]
        total = sum(self.counts.values())
        return {"heat": heat, "stats": {"events": [total], "matched": [total], "dropped": [0]},
                "mono_ns": int((self.now - T0 + 1000) * 1e9)}

    def delete(self, keys):
        pass

    def close(self):
        pass


def run(tmp_path, passes: list[float], snapshots: list[float]) -> list[dict]:
    """The daemon's cycles: a snapshot at each time in `snapshots`, the aging passes of `passes`
    (wall times) run before the snapshot that follows them; /snapshot.json documents."""
    cfg = loads("bpf: {half_life: 10s}\nmetrics: {cold_thresholds: [10s]}\naging: {interval: 5s}\ntargets: [{name: w, pid: %d}]" % PID)
    k = Kernel()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path), loader=k.program,
                                       wall=lambda: k.now)
    src.start()
    todo = sorted(passes)
    out = []
    for t in snapshots:
        while todo and todo[0] <= t:
            k.age(todo.pop(0))
        k.now = t
        data = src.cycle(cfg.targets, {"/mglrud-capture": MEMCG}, lruvecs=k.lruvecs())
        snap = Snapshot(taken_at=t, page_size=PAGE, cold_thresholds=cfg.metrics.cold_thresholds,
                        idle_age_buckets=cfg.metrics.buckets, hotness=data)
        out.append(json.loads(json.dumps(snapshot_json.to_dict(snap))))  # as the daemon serves it
    return out


def heat_columns(docs: list[dict], interval: float) -> tuple[list[float], dict[int, list[str]]]:
    """(interval starts, {region: glyph per interval}) as the live view aggregates them."""
    h = History(None, PID)
    for d in docs:
        h.add(d)
    g = HM.aggregate(h.grid(), interval)
    rows = {k.start >> SHIFT: [HM.glyph(c) for c in cs] for k, cs in zip(g.rows, g.cells)}
    return [t - T0 for t in g.times], rows


def test_snapshots_between_passes_are_not_measured_and_the_first_pass_is_not_all_hot(tmp_path):
    # aging every 5 s (phase 0.1 s), a snapshot every 2 s and right after each aging
    passes = [T0 + 5.1 * 1 + 5 * i for i in range(6)]  # 5.1, 10.1, ... 30.1
    snaps = sorted({T0 + 2 * i for i in range(17)} | {p + 0.05 for p in passes})
    docs = run(tmp_path, passes, snaps)
    times, rows = heat_columns(docs, 2.0)
    assert times == [2.0 * i for i in range(17)]
    with_pass = {4.0, 10.0, 14.0, 20.0, 24.0, 30.0}  # intervals [t, t+2) holding one
    first = 4.0  # the first pass seen: what it found piled up since the process started
    for r in HOT + COLD:
        for t, g in zip(times, rows[r]):
            if t < first:  # nothing found yet, residency not read in this fixture: not shown
                assert g == " ", (r, t, rows[r])
            elif t in with_pass and t != first:
                assert g == ("@" if r in HOT else "."), (r, t, rows[r])
            else:  # no pass in the interval, or the first one: not measured, never "nothing accessed"
                assert g == "?", (r, t, rows[r])
    # the newest snapshot alone (mglrud heatmap --columns 1, mglrud report): the newest measured pass
    latest = HM.hotness_cells(docs[-1], pid=PID)
    assert {k.start >> SHIFT: c.heat for k, c in latest.items()} == {**{r: 1.0 for r in HOT}, **{r: 0.0 for r in COLD}}


def test_aging_running_late_leaves_its_interval_unmeasured_and_a_pass_read_late_in_its_own(tmp_path):
    # due every 5 s, but a slow guest: the pass due at 15 runs at 17.4; the one at 9.9 is read
    # only by the snapshot at 10.3, in the next interval
    passes = [T0 + x for x in (5.2, 9.9, 17.4, 21.0, 26.0)]
    snaps = [T0 + x for x in (0.0, 2.0, 4.0, 5.3, 6.0, 8.0, 10.3, 12.0, 14.0, 16.0, 17.5, 19.0,
                              21.1, 23.0, 25.0, 26.1, 28.0)]
    docs = run(tmp_path, passes, snaps)
    times, rows = heat_columns(docs, 5.0)
    assert times == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    # [0,5): no pass; [5,10): the first (unmeasured) and the one at 9.9; [10,15): none ran
    # (blank before any pass: nothing found yet, and this fixture's residency is not read)
    assert all(rows[r] == [" ", "@", "?", "@", "@", "@"] for r in HOT), rows
    assert all(rows[r] == [" ", ".", "?", ".", ".", "."] for r in COLD), rows
    # the text view draws the same
    h = History(None, PID)
    for d in docs:
        h.add(d)
    text = HM.text(HM.frame(h.grid(), HM.View(aggregate=5.0), 120, 40))
    hot_line = next(l for l in text.splitlines() if l.startswith(f"{HOT[0] << SHIFT:#x}"))
    assert hot_line.endswith(" @?@@@|")


def test_passes_in_json_and_an_older_document_without_them(tmp_path):
    docs = run(tmp_path, [T0 + 5.0, T0 + 10.0], [T0, T0 + 5.1, T0 + 10.1])
    doc = snapshot_json.from_dict(docs[-1])
    assert [(p.seq, round(p.at - T0, 6), p.measured) for p in doc.hotness.passes] == [(6, 10.0, True), (5, 5.0, False)]
    hot = next(r for t in doc.hotness.targets for r in t.regions if r.start >> SHIFT == HOT[0])
    assert [(f.seq, f.bytes) for f in hot.found_in] == [(6, 2 << 20), (5, 2 << 20)]
    # a daemon from before passes: no `passes`, no `found_in`; read with defaults, one column per snapshot
    old = json.loads(json.dumps(docs[-1]))
    del old["hotness"]["passes"]
    for t in old["hotness"]["targets"]:
        for r in t["regions"]:
            del r["found_in"]
    od = snapshot_json.from_dict(old)
    assert od.hotness.passes is None and all(r.found_in == () for t in od.hotness.targets for r in t.regions)
    assert len(HM.columns(od, pid=PID)) == 1
    # without an lru_gen read (the source driven alone, as the replay tests do): no passes
    cfg = loads("targets: [{name: w, pid: %d}]" % PID)
    k = Kernel()
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp_path / "b"), loader=k.program)
    src.start()
    assert src.cycle(cfg.targets, {}).passes is None


def _named_after(docs, monkeypatch, unnamed_reads: int, refresh_each: bool):
    """A History whose first `unnamed_reads` reads of /proc/PID/maps miss the regions' mapping (made
    after the read, as memcached's new slab pages are); the later ones name it `[heap]`."""
    from mglrud.tui import feeds

    reads = []

    def maps(snap, target, pid):
        reads.append(1)
        return {} if len(reads) <= unnamed_reads else {PID: [(BASE << SHIFT, (BASE + 20) << SHIFT, "[heap]")]}

    monkeypatch.setattr(feeds.client, "hotness_maps", maps)
    h = History(None, PID)
    for d in docs:
        if refresh_each:
            h.maps_at = float("-inf")  # MAPS_REFRESH seconds have gone by
        h.add(d)
    return h, reads


def test_a_region_named_after_it_was_first_drawn_stays_one_row(tmp_path, monkeypatch):
    # seen in the TUI and make demo's PNG: a region drawn once as `?` and again under its name
    docs = run(tmp_path, [T0 + 5.0, T0 + 10.0], [T0, T0 + 5.1, T0 + 10.1])
    # the maps read with the first two snapshots miss the mapping (the second lists the regions first)
    h, _ = _named_after(docs, monkeypatch, unnamed_reads=2, refresh_each=True)
    g = h.grid()
    ranges = [(k.pid, k.start, k.end) for k in g.rows]
    assert len(ranges) == len(set(ranges)) == len(HOT + COLD), g.rows
    assert {k.name for k in g.rows} == {"[heap]"}, g.rows
    # the row holds the columns drawn before the name was known too
    hot = g.rows.index(next(k for k in g.rows if k.start >> SHIFT == HOT[0]))
    assert [HM.glyph(c) for c in g.cells[hot]] == [" ", "?", "?", "@", "?"], g.cells[hot]
    text = HM.text(HM.frame(g, HM.View(aggregate=1.0), 120, 40))
    labels = [line.split()[:2] for line in text.splitlines() if line.startswith("0x")]
    assert len(labels) == len(HOT + COLD) and all(name == "[heap]" for _, name in labels), text


def test_a_region_first_seen_rereads_the_maps_at_once(tmp_path, monkeypatch):
    # the regions appear with the first pass (the second snapshot): the maps are read again then,
    # not MAPS_REFRESH seconds after the first read, which missed them
    docs = run(tmp_path, [T0 + 5.0, T0 + 10.0], [T0, T0 + 5.1, T0 + 10.1])
    h, reads = _named_after(docs, monkeypatch, unnamed_reads=1, refresh_each=False)
    assert len(reads) == 2, reads
    assert {k.name for k in h.grid().rows} == {"[heap]"}, h.grid().rows
