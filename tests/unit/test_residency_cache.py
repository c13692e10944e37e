"""Residency read only where it may have changed (issue 19: ≤ 10 ms a GiB; sources/bpf_heat.py
ResidencyCache, `bpf.residency_max_age`).

Everything goes through the filesystem seam: a /proc tree with the captured workload's smaps
(tests/fixtures/bpf/smaps), a maps file made of its mapping lines, the captured pagemap
(tests/fixtures/bpf/pagemap.json) written into a sparse file at the mapping's offset, and stat
and statm files the tests change between cycles as the kernel's counters would move. The answer
of the cache is compared with a fresh read_residency() of the same files: the same, once what
changed has been read again, within the bounds the docs state.
"""
import base64
import json
import struct

import pytest

from mglrud.config import ConfigError, loads
from mglrud.model import hotness as H
from mglrud.sources import bpf_heat
from mglrud.sources.smaps import parse_smaps
from tests.bpf_replay import BPF, META, fixture_proc

PAGE = 4096
SHIFT = 21
PM = json.loads((BPF / "pagemap.json").read_text())
ENTRIES = memoryview(base64.b64decode(PM["entries_b64"])).cast("Q").tolist()
PID = META["pid"]
START = PM["address"]
SMAPS = (BPF / "smaps").read_text()
MAPS = "".join(line + "\n" for line in SMAPS.splitlines() if line[:1] in "0123456789abcdef" and "-" in line[:17]
               and ":" not in line.split()[0])


class Proc:
    """The fixture process: its /proc files, and what the tests do to it."""

    def __init__(self, tmp_path, entries=ENTRIES):
        self.fs = fixture_proc(tmp_path)
        self.dir = tmp_path / "proc" / str(PID)
        (self.dir / "maps").write_text(MAPS)
        self.entries = list(entries)
        self.write_pagemap()
        self.stat(start=4242)
        self.statm(resident=sum(1 for e in self.entries if e & H.PM_PRESENT))

    def write_pagemap(self):
        with open(self.dir / "pagemap", "wb") as f:
            # the other mappings smaps shows resident: their first Rss / PAGE pages present
            # (file pages where the mapping is a file's), so that pagemap and smaps agree
            for e in parse_smaps(SMAPS):
                if e.rss and e.start != START:
                    f.seek(e.start // PAGE * 8)
                    flags = H.PM_PRESENT | (H.PM_FILE if e.path.startswith("/") else 0) | 1000
                    f.write(struct.pack("<Q", flags) * (e.rss // PAGE))
            f.seek(START // PAGE * 8)
            f.write(struct.pack(f"<{len(self.entries)}Q", *self.entries))

    def stat(self, start):
        (self.dir / "stat").write_text(f"{PID} (python3) S 1 {PID} {PID} 0 -1 4194560 " + "0 " * 8
                                       + f"20 0 1 0 {start} 100000000 25000\n")

    def statm(self, resident, size=40000, shared=1000):
        (self.dir / "statm").write_text(f"{size} {resident} {shared} 700 0 30000 0\n")

    def drop(self, pages):
        """Pages that went away (reclaimed, unmapped): not present in pagemap any more."""
        for i in pages:
            self.entries[i] = 0
        self.write_pagemap()

    def fresh(self):
        return bpf_heat.read_residency(self.fs, PID, SHIFT, PAGE, bpf_heat.node_of_pfn(self.fs), None)


def _read(cache, proc, now):
    cache.begin()
    return cache.read(proc.fs, PID, SHIFT, PAGE, bpf_heat.node_of_pfn(proc.fs), now, None)


@pytest.fixture
def pieces(monkeypatch):
    """16 pieces of 4 MiB over the 64 MiB mapping, a quarter of them read again a cycle."""
    monkeypatch.setattr(bpf_heat, "READ_BYTES", 4 << 20)
    monkeypatch.setattr(bpf_heat, "ROLL_MIN_BYTES", 0)


def test_the_first_read_is_read_residency(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(60.0)
    got = _read(cache, proc, 1000.0)
    assert got == proc.fresh() and sum(got[1].values()) >= PM["pages"]
    assert cache.full_reads == 1


def test_counters_that_did_not_move_read_nothing(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(60.0)
    first = _read(cache, proc, 1000.0)
    (proc.dir / "smaps").unlink()  # any read of smaps or pagemap now would fail or change the answer
    (proc.dir / "pagemap").write_bytes(b"")
    for t in (1010.0, 1020.0, 1059.0):
        assert _read(cache, proc, t) == first
    assert cache.full_reads == 1 and cache.piece_reads == 0


@pytest.mark.parametrize("small", [True, False])
def test_at_max_age_it_is_read_again_whatever_the_counters_say(tmp_path, monkeypatch, small):
    # pages gone with counters that do not show it (counter slack, a page migrated): smaps at max
    # age, and pagemap from then on: at once for a process under ROLL_MIN_BYTES, else a quarter a cycle
    if not small:
        monkeypatch.setattr(bpf_heat, "READ_BYTES", 4 << 20)
        monkeypatch.setattr(bpf_heat, "ROLL_MIN_BYTES", 0)
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(60.0)
    first = _read(cache, proc, 1000.0)
    proc.drop(range(0, PM["pages"], 2))
    assert _read(cache, proc, 1059.9) == first
    got = [_read(cache, proc, 1060.0 + t) for t in range(bpf_heat.ROLL_ROUNDS)]
    assert got[-1] == proc.fresh() != first
    assert (got[0] == got[-1]) == small
    # no mapping over EMPTY_READ_MAX left unread: the mappings from maps, not smaps again
    assert cache.full_reads == 1 and cache.maps_refreshes == 1


def test_at_max_age_smaps_again_for_a_process_with_a_large_empty_mapping(tmp_path):
    # a 2 GiB reservation empty at the smaps read is not read between smaps reads; one that
    # filled since is seen at max age, through smaps
    proc = Proc(tmp_path)
    at = START - (8 << 30)
    header = f"{at:x}-{at + (2 << 30):x} rw-p 00000000 00:00 0 \n"
    (proc.dir / "smaps").write_text(SMAPS + header + "Size: 2097152 kB\nRss: 0 kB\nVmFlags: rd wr mr mw me ac\n")
    (proc.dir / "maps").write_text(MAPS + header)
    cache = bpf_heat.ResidencyCache(60.0)
    first = _read(cache, proc, 1000.0)
    assert first == proc.fresh()
    with open(proc.dir / "pagemap", "r+b") as f:  # 100 pages of it faulted in
        f.seek(at // PAGE * 8)
        f.write(struct.pack("<100Q", *[H.PM_PRESENT | 5] * 100))
    (proc.dir / "smaps").write_text(SMAPS + header + "Size: 2097152 kB\nRss: 400 kB\nVmFlags: rd wr mr mw me ac\n")
    proc.statm(resident=77777)
    got = _read(cache, proc, 1010.0)
    assert got == first  # counters moved, but the reservation is not read between smaps reads
    got = _read(cache, proc, 1060.0)
    assert cache.full_reads == 2 and cache.maps_refreshes == 0
    assert got == proc.fresh() and sum(n for (r, _, _), n in got[1].items() if at <= r << SHIFT < at + (2 << 30)) == 100


def test_moved_counters_read_everything_again_within_roll_rounds_cycles(tmp_path, pieces):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(3600.0)
    _read(cache, proc, 1000.0)
    proc.drop(range(0, PM["pages"], 3))  # a third of the pages, all over the mapping
    proc.statm(resident=12345)
    reads, seen = [], []
    for cycle in range(bpf_heat.ROLL_ROUNDS):
        seen.append(_read(cache, proc, 1010.0 + cycle))
        # the workload mapping's 4 MiB pieces read this cycle
        reads.append(sum(1 for (lo, _, _, _), (_, seq, _) in cache.procs[PID].pieces.items()
                         if START <= lo < START + PM["pages"] * PAGE and seq == cache.seq))
    want = proc.fresh()
    assert seen[0] != want  # a part read again in the first cycle, not all of it
    assert seen[-1] == want  # all of it within ROLL_ROUNDS cycles
    assert cache.full_reads == 1
    # its 16 pieces spread over the cycles (a quarter of the process's readable bytes a cycle: the
    # workload's 64 MiB, the other mappings, and the small ones empty at the full read, which the
    # first cycle reads first)
    assert sum(reads) == 16 and max(reads) <= 8 and sum(1 for r in reads if r) >= 3, reads
    before = cache.piece_reads
    assert _read(cache, proc, 1020.0) == want and cache.piece_reads == before


def test_a_change_read_halfway_through_starts_the_round_again(tmp_path, pieces):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(3600.0)
    _read(cache, proc, 1000.0)
    proc.drop(range(0, 2000))
    proc.statm(resident=20000)
    _read(cache, proc, 1001.0)
    proc.drop(range(PM["pages"] - 2000, PM["pages"]))  # the end of the mapping, maybe read already
    proc.statm(resident=18000)
    for t in range(bpf_heat.ROLL_ROUNDS):
        got = _read(cache, proc, 1002.0 + t)
    assert got == proc.fresh()


def test_another_process_with_the_same_pid_is_read_in_full(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(60.0)
    first = _read(cache, proc, 1000.0)
    proc.drop(range(0, 100))
    proc.stat(start=9999)  # the same counters, another start time
    got = _read(cache, proc, 1001.0)
    assert got == proc.fresh() and got != first and cache.full_reads == 2


def test_a_new_mapping_is_read_at_once_and_a_large_one_in_full(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(3600.0)
    _read(cache, proc, 1000.0)
    # a 4 MiB mapping (1024 pages, every other one present) 1 GiB below the workload's
    at = START - (1 << 30)
    with open(proc.dir / "pagemap", "r+b") as f:
        f.seek(at // PAGE * 8)
        f.write(struct.pack("<1024Q", *[(H.PM_PRESENT | 77) if i % 2 else 0 for i in range(1024)]))
    (proc.dir / "maps").write_text(MAPS + f"{at:x}-{at + (4 << 20):x} rw-p 00000000 00:00 0 \n")
    proc.statm(resident=99999, size=41024)
    spans, cells, why = _read(cache, proc, 1001.0)
    assert why == "" and sum(n for (r, _, _), n in cells.items() if r << SHIFT >= at and r << SHIFT < START) == 512
    assert (at, at + (4 << 20)) in spans and cache.full_reads == 1
    # a new mapping over EMPTY_READ_MAX (a reservation, most of it empty): smaps says what is resident
    huge = START - (8 << 30)
    (proc.dir / "maps").write_text(MAPS + f"{huge:x}-{huge + (2 << 30):x} rw-p 00000000 00:00 0 \n")
    proc.statm(resident=99999, size=600000)
    assert _read(cache, proc, 1002.0) == proc.fresh() and cache.full_reads == 2


def test_a_process_gone_is_gone_and_forgotten(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(60.0)
    _read(cache, proc, 1000.0)
    proc.statm(resident=1)
    (proc.dir / "maps").unlink()
    assert _read(cache, proc, 1001.0) is None and PID not in cache.procs
    cache.keep([])
    assert cache.procs == {}


def test_without_stat_and_statm_every_cycle_is_a_full_read(tmp_path):
    proc = Proc(tmp_path)
    (proc.dir / "statm").unlink()
    cache = bpf_heat.ResidencyCache(60.0)
    _read(cache, proc, 1000.0)
    proc.drop(range(0, 1000))
    assert _read(cache, proc, 1001.0) == proc.fresh() and PID not in cache.procs


def test_max_age_zero_reads_everything_every_cycle(tmp_path):
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(0.0)
    _read(cache, proc, 1000.0)
    proc.drop(range(0, 1000))  # counters unchanged
    assert _read(cache, proc, 1001.0) == proc.fresh() and cache.procs == {}


def test_pagemap_unreadable_is_said_every_cycle_and_not_kept(tmp_path):
    proc = Proc(tmp_path)
    (proc.dir / "pagemap").unlink()
    cache = bpf_heat.ResidencyCache(60.0)
    spans, cells, why = _read(cache, proc, 1000.0)
    assert cells is None and why.startswith("cannot read pagemap") and spans and PID not in cache.procs


def test_the_source_gives_the_same_metrics_with_and_without_the_cache(tmp_path):
    """Through BpfHotnessSource over the captured dumps: what reaches the snapshot is the same with
    `residency_max_age: 0` (every cycle in full) and the default (counters unchanged: kept)."""
    from mglrud.collectors import bpf as families
    from mglrud.model import Snapshot
    from mglrud.sources import bpf_hotness
    from tests.bpf_replay import DUMPS, ReplayProgram

    out = []
    for age in ("0", "1m"):
        proc = Proc(tmp_path / age)
        cfg = loads("bpf: {residency_max_age: %s}\ntargets: [{name: w, pid: %d}]" % (age, PID))
        src = bpf_hotness.BpfHotnessSource(cfg.bpf, proc.fs, loader=ReplayProgram)
        src.start()
        for _ in DUMPS:
            data = src.cycle(cfg.targets, {})
        snap = Snapshot(taken_at=1.8e9, page_size=PAGE, cold_thresholds=cfg.metrics.cold_thresholds,
                        idle_age_buckets=cfg.metrics.buckets, hotness=data)
        out.append([(f.name, f.samples) for f in families.families(snap)])
        assert sum(r.resident_pages or 0 for t in data.targets for r in t.regions) >= PM["pages"]
    assert out[0] == out[1]


@pytest.mark.parametrize("value, error", [
    ("2h", "bpf.residency_max_age: must be at most 1h, got '2h'"),
    ("5", "bpf.residency_max_age: must be 0 or a duration with a unit like 30s, 1m (at most 1h), got 5"),
    ("500ms", "bpf.residency_max_age: must be at least 1s, got '500ms'"),
    ("soon", "bpf.residency_max_age: must be a duration with a unit like 30s, 5m or 1h, got 'soon'"),
])
def test_a_bad_residency_max_age_is_one_line(value, error):
    with pytest.raises(ConfigError) as e:
        loads("bpf: {residency_max_age: %s}\ntargets: [{name: w, pid: 1}]" % value)
    assert str(e.value) == error


def test_residency_max_age_values():
    base = "targets: [{name: w, pid: 1}]\n"
    assert loads(base).bpf.residency_max_age == 120.0
    assert loads(base + "bpf: {residency_max_age: 0}").bpf.residency_max_age == 0.0
    assert loads(base + "bpf: {residency_max_age: 5m}").bpf.residency_max_age == 300.0


def test_maps_lines_give_the_keys_smaps_gives():
    text = MAPS + "7f00-7f01 rw-p 00000000 00:00 0                          /memfd:a b (deleted)\n"
    assert bpf_heat.parse_maps(text) == [(e.start, e.end, e.path) for e in parse_smaps(text)]
    with pytest.raises(ValueError):
        bpf_heat.parse_maps("garbage\n")


class Nodes:
    """move_pages(2) stand-in: every page on node `where`; counts the pages asked about."""

    def __init__(self):
        self.where, self.asked = 0, 0

    def __call__(self, pid, start, n, page_size):
        self.asked += n
        return struct.pack(f"<{n}i", *[self.where] * n)


def _two_node_proc(tmp_path):
    proc = Proc(tmp_path)
    zi = (BPF / "zoneinfo").read_text().replace("Node 0, zone    DMA32", "Node 1, zone    DMA32")
    (tmp_path / "proc" / "zoneinfo").write_text(zi)
    assert bpf_heat.node_of_pfn(proc.fs)[1] is None
    return proc


def _nodes_of(result):
    return {n for (_, n, _), c in result[1].items() if c}


def test_pieces_whose_pagemap_bytes_did_not_change_are_not_asked_about_again(tmp_path, pieces):
    # counters moved (a few pages dropped in one piece): move_pages(2) only for the pieces whose
    # pagemap bytes changed, the rest keep their cells
    proc = _two_node_proc(tmp_path)
    status = Nodes()
    cache = bpf_heat.ResidencyCache(3600.0)
    cache.begin()
    cache.read(proc.fs, PID, SHIFT, PAGE, bpf_heat.node_of_pfn(proc.fs), 1000.0, status)
    full = status.asked
    proc.drop(range(0, 10))
    proc.statm(resident=1)
    for t in range(bpf_heat.ROLL_ROUNDS):
        status.asked = 0
        cache.begin()
        got = cache.read(proc.fs, PID, SHIFT, PAGE, bpf_heat.node_of_pfn(proc.fs), 1001.0 + t, status)
        assert status.asked <= 1024  # the 4 MiB piece with the dropped pages, or nothing
    assert got == bpf_heat.read_residency(proc.fs, PID, SHIFT, PAGE, bpf_heat.node_of_pfn(proc.fs), status)
    assert full > 16 * 1024


def test_at_max_age_pages_that_moved_node_are_seen_though_pagemap_did_not_change(tmp_path, pieces):
    proc = _two_node_proc(tmp_path)
    status = Nodes()
    cache = bpf_heat.ResidencyCache(60.0)
    nodes = bpf_heat.node_of_pfn(proc.fs)
    cache.begin()
    first = cache.read(proc.fs, PID, SHIFT, PAGE, nodes, 1000.0, status)
    assert _nodes_of(first) == {0}
    status.where = 1  # NUMA balancing moved every page: same pagemap bytes (no PFNs), same counters
    proc.statm(resident=5)  # and the counters moved for another reason: still the same bytes
    cache.begin()
    assert _nodes_of(cache.read(proc.fs, PID, SHIFT, PAGE, nodes, 1010.0, status)) == {0}
    for t in range(bpf_heat.ROLL_ROUNDS):
        cache.begin()
        got = cache.read(proc.fs, PID, SHIFT, PAGE, nodes, 1060.0 + t, status)
    assert _nodes_of(got) == {1} and got == bpf_heat.read_residency(proc.fs, PID, SHIFT, PAGE, nodes, status)


def test_new_mappings_every_cycle_do_not_hold_back_the_rest(tmp_path, pieces):
    # a process that maps more every cycle: the new mappings are read at once, and the pieces read
    # before the counters moved still within ROLL_ROUNDS cycles
    proc = Proc(tmp_path)
    cache = bpf_heat.ResidencyCache(3600.0)
    _read(cache, proc, 1000.0)
    proc.drop(range(0, PM["pages"], 3))
    maps = MAPS
    for t in range(bpf_heat.ROLL_ROUNDS):
        at = START - ((t + 1) << 30)
        maps += f"{at:x}-{at + (64 << 20):x} rw-p 00000000 00:00 0 \n"  # 64 MiB, nothing resident
        (proc.dir / "maps").write_text(maps)
        proc.statm(resident=1000 + t, size=50000 + t)
        got = _read(cache, proc, 1001.0 + t)
    assert got == proc.fresh()
