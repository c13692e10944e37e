"""The /proc source's pure parsers and its bookkeeping, on text captured from a real process.

Fixtures: tests/fixtures/procfs/capture.py ran tests/integration/procfs_workload.py
(a 4 MiB hot anonymous region written in a loop, a 4 MiB cold one written once,
a 4 MiB file mapping read once, a 4 MiB memfd written once) and copied its smaps
before any clear (smaps.first), its smaps one interval after a clear_refs (smaps),
and its numa_maps. workload.json has the regions' addresses as the workload saw them.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from mglrud.config import Paths, Target, memcg_glob
from mglrud.fs import FS
from mglrud.model.procfs import (OTHER, cold_bytes, group_mappings, idle_histogram,
                             mapping_node_lru_bytes)
from mglrud.sources import procfs, smaps

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "procfs"
WL = json.loads((FIX / "workload.json").read_text())
SIZE = WL["size"]
SMAPS = (FIX / "pid" / "smaps").read_text()
SMAPS_FIRST = (FIX / "pid" / "smaps.first").read_text()
NUMA = (FIX / "pid" / "numa_maps").read_text()
HEADERS = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ", re.M)


def by_start(entries, start):
    [e] = [e for e in entries if e.start == start]
    return e


# ---------------------------------------------------------------- smaps

def test_every_mapping_is_parsed():
    entries = smaps.parse_smaps(SMAPS)
    assert len(entries) == len(HEADERS.findall(SMAPS))
    assert [e.start for e in entries] == sorted(e.start for e in entries)
    assert all(e.vmflags for e in entries)
    assert all(e.end > e.start for e in entries)


def test_hot_region_was_referenced_during_the_interval_and_cold_was_not():
    entries = smaps.parse_smaps(SMAPS)
    hot, cold = by_start(entries, WL["hot"][0]), by_start(entries, WL["cold"][0])
    for e in (hot, cold):
        assert e.end - e.start == SIZE
        assert e.rss == e.anonymous == SIZE
        assert e.path == "" and e.perms == "rw-p"
    # Written every pass during the interval; the TLB can hide a few pages (see sources/procfs.py).
    assert hot.referenced >= 0.9 * SIZE
    assert cold.referenced == 0


def test_before_any_clear_referenced_counts_since_the_process_began():
    cold = by_start(smaps.parse_smaps(SMAPS_FIRST), WL["cold"][0])
    assert cold.referenced == SIZE


def test_file_and_memfd_mappings():
    entries = smaps.parse_smaps(SMAPS)
    f = by_start(entries, WL["file"][0])
    assert f.path.endswith("/" + WL["tmpdir_file"]) and f.perms == "r--s"
    assert f.rss == SIZE and f.anonymous == 0
    assert smaps.lru_split(f) == (0, SIZE)
    m = by_start(entries, WL["memfd"][0])
    assert m.path == "/memfd:mglrud-test (deleted)"
    assert smaps.mapping_name(m.path) == "/memfd:mglrud-test"
    # shmem is swap-backed: on the anon LRU although smaps' Anonymous is 0.
    assert m.anonymous == 0 and smaps.lru_split(m) == (SIZE, 0)


def test_special_mappings_keep_their_names():
    names = {smaps.mapping_name(e.path) for e in smaps.parse_smaps(SMAPS)}
    assert {"[heap]", "[stack]", "[vdso]", "[anon]"} <= names
    assert any(n.endswith("/python3.11") or "/python3" in n for n in names)


def test_fields_are_bytes():
    hot = by_start(smaps.parse_smaps(SMAPS), WL["hot"][0])
    assert hot.get("Size") == SIZE
    assert hot.get("KernelPageSize") == 4096
    assert hot.swap == 0


def test_a_line_out_of_place_is_a_parse_error():
    first_field = SMAPS.index("\n") + 1
    with pytest.raises(smaps.ParseError, match="line 1"):
        smaps.parse_smaps(SMAPS[first_field:])
    mangled = SMAPS.replace("Referenced:", "Referenced", 1)
    with pytest.raises(smaps.ParseError, match="unexpected"):
        smaps.parse_smaps(mangled)


def test_empty_smaps_is_no_mappings():
    # What a zombie's smaps reads as.
    assert smaps.parse_smaps("") == ()


# ---------------------------------------------------------------- numa_maps

def test_numa_maps_has_every_mapping_and_its_node_pages():
    numa = smaps.parse_numa_maps(NUMA)
    # numa_maps walks the process's VMAs; smaps also shows the gate area, [vsyscall].
    assert [n.start for n in numa] == [e.start for e in smaps.parse_smaps(SMAPS) if e.path != "[vsyscall]"]
    hot = by_start(numa, WL["hot"][0])
    assert hot.page_size == 4096
    assert hot.node_bytes() == ((0, SIZE),)
    assert hot.anon == SIZE // 4096
    f = by_start(numa, WL["file"][0])
    assert f.node_bytes() == ((0, SIZE),)


def test_numa_maps_without_a_page_has_no_nodes():
    numa = smaps.parse_numa_maps(NUMA)
    guard = [n for n in numa if n.start == WL["hot"][1]]  # the PROT_NONE page between hot and cold
    assert guard and guard[0].nodes == ()


def test_numa_maps_garbage():
    with pytest.raises(smaps.ParseError, match="no address"):
        smaps.parse_numa_maps("x" + NUMA)


# ---------------------------------------------------------------- the source, through the FS seam

PID = WL["pid"]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def fake_proc(tmp_path: Path, smaps: str, pids=(PID,)) -> Path:
    root = tmp_path / "proc"
    for pid in pids:
        d = root / str(pid)
        shutil.copytree(FIX / "pid", d, dirs_exist_ok=True)
        (d / "smaps").write_text(smaps)
        (d / "clear_refs").write_text("")
    return root


def make_source(root: Path, clock, clear_refs=True, **kw):
    """The source on a fake /proc. clear_refs ON unless a test says otherwise: these tests measure
    accessed bytes, which need it (the source's default, like procfs.clear_refs', is off)."""
    fs = FS(Paths(procfs=str(root), sysfs=str(root / "nosys")))
    return procfs.ProcfsSource(fs, clock=clock, wall=clock, exclude=(), clear_refs=clear_refs, **kw)


def target(kind="pid", value=PID, name="wl", interval=30.0):
    pattern = {"cmdline": lambda: re.compile(str(value)), "memcg": lambda: memcg_glob(str(value))}.get(kind)
    return Target(name=name, kind=kind, value=value, interval=interval, can_swap=True, force_scan=True,
                  pattern=pattern() if pattern else None)


def test_first_read_starts_an_interval_second_read_measures_it(tmp_path):
    root = fake_proc(tmp_path, SMAPS_FIRST)
    clock = Clock()
    src = make_source(root, clock)
    data = src.read([target()])
    assert (root / str(PID) / "clear_refs").read_text() == "1"
    [p] = data.processes
    assert p.pid == PID and p.target == "wl" and p.comm == "python3"
    assert p.interval_seconds is None
    assert all(m.accessed_bytes is None and m.idle_seconds is None for m in p.mappings)

    (root / str(PID) / "smaps").write_text(SMAPS)
    clock.t += 30
    [p] = src.read([target()]).processes
    assert p.interval_seconds == pytest.approx(30)
    hot = next(m for m in p.mappings if m.start == WL["hot"][0])
    cold = next(m for m in p.mappings if m.start == WL["cold"][0])
    assert hot.accessed_bytes >= 0.9 * SIZE and hot.idle_seconds == 0
    assert cold.accessed_bytes == 0 and cold.idle_seconds == pytest.approx(30)
    assert hot.node_bytes == ((0, SIZE),)  # one node: numa_maps is not read, smaps says it all

    clock.t += 30
    [p] = src.read([target()]).processes
    cold = next(m for m in p.mappings if m.start == WL["cold"][0])
    assert cold.idle_seconds == pytest.approx(60)
    assert src.reads == 3 and src.errors["exited"] == 0


def test_targets_are_read_on_their_interval_not_every_cycle(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    clock = Clock()
    src = make_source(root, clock)
    src.read([target(interval=30)])
    clock.t += 10
    src.read([target(interval=30)])
    assert src.reads == 1
    clock.t += 20
    src.read([target(interval=30)])
    assert src.reads == 2


def test_the_largest_processes_are_read_up_to_the_bound(tmp_path):
    root = fake_proc(tmp_path, SMAPS, pids=(PID, PID + 1, PID + 2))
    src = make_source(root, Clock(), max_processes=2)
    data = src.read([target("cmdline", "procfs_workload", "all")])
    # Equal RSS: the lower pids win the tie.
    assert [p.pid for p in data.processes] == [PID, PID + 1]
    assert data.targets[0].pids == (PID, PID + 1)


def test_a_process_that_vanished_is_counted_not_raised(tmp_path):
    root = fake_proc(tmp_path, SMAPS, pids=(PID, PID + 1))
    (root / str(PID + 1) / "smaps").unlink()
    src = make_source(root, Clock())
    data = src.read([target("cmdline", "procfs_workload", "all")])
    assert [p.pid for p in data.processes] == [PID]
    assert dict(data.stats.errors)["exited"] == 1


def test_an_empty_smaps_is_a_zombie(tmp_path):
    root = fake_proc(tmp_path, "")
    src = make_source(root, Clock())
    data = src.read([target()])
    assert data.processes == () and dict(data.stats.errors)["exited"] == 1
    assert "exited" in data.targets[0].problem
    assert (root / str(PID) / "clear_refs").read_text() == ""


def test_a_missing_process_target_says_so(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    data = make_source(root, Clock()).read([target(value=PID + 7)])
    assert data.targets[0].problem == f"no running process with pid {PID + 7}"


def test_clear_refs_off_reads_only(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    clock = Clock()
    src = make_source(root, clock, clear_refs=False)
    src.read([target()])
    clock.t += 60
    [p] = src.read([target()]).processes
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert p.interval_seconds is None and all(m.accessed_bytes is None for m in p.mappings)


def test_clear_refs_is_off_by_default_and_the_rest_is_still_read(tmp_path):
    """Issue 15 item 5: without the opt-in, no write to clear_refs, ever; resident, anon/file,
    swap and node bytes are still there, and the data says accessed bytes are not measured."""
    assert procfs.ProcfsSource.__init__.__kwdefaults__["clear_refs"] is False
    root = fake_proc(tmp_path, SMAPS)
    clock = Clock()
    src = procfs.ProcfsSource(FS(Paths(procfs=str(root), sysfs=str(root / "nosys"))), clock=clock, wall=clock,
                              exclude=())
    for _ in range(3):
        data = src.read([target()])
        clock.t += 60
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert data.clear_refs is False and data.stats.clear_seconds == 0
    [p] = data.processes
    assert all(m.accessed_bytes is None and m.idle_seconds is None for m in p.mappings)
    assert sum(m.resident_bytes for m in p.mappings) > 0
    assert sum(m.anon_bytes for m in p.mappings) > 0 and sum(m.file_bytes for m in p.mappings) > 0
    assert all(m.node_bytes for m in p.mappings if m.resident_bytes)


# ---------------------------------------------------------------- derived values

def measured(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    clock = Clock()
    src = make_source(root, clock, top_mappings=3)
    src.read([target()])
    clock.t += 30
    return src.read([target()])


def test_groups_are_bounded_and_keep_every_byte(tmp_path):
    data = measured(tmp_path)
    groups = group_mappings(data.processes, "wl", 3)
    assert len(groups) == 4 and groups[-1].name == OTHER
    total = sum(sum(g.resident.values()) for g in groups)
    assert total == data.processes[0].resident_bytes
    assert sum(sum(g.node_bytes.values()) for g in groups) == total


def test_cold_bytes_and_idle_histogram(tmp_path):
    data = measured(tmp_path)
    [p] = data.processes
    hot = next(m for m in p.mappings if m.start == WL["hot"][0])
    cold = next(m for m in p.mappings if m.start == WL["cold"][0])
    assert cold_bytes(cold, 30, p.interval_seconds) == SIZE
    assert cold_bytes(cold, 31, p.interval_seconds) == 0
    assert cold_bytes(hot, 30, p.interval_seconds) == SIZE - hot.accessed_bytes
    buckets, total = idle_histogram(((hot, 30.0), (cold, 30.0)), (10.0, 30.0))
    assert buckets == [(10.0, hot.accessed_bytes), (30.0, 2 * SIZE), (float("inf"), 2 * SIZE)]
    assert total == 30.0 * (2 * SIZE - hot.accessed_bytes)


def test_node_split_by_lru():
    m = smaps.parse_smaps(SMAPS)
    memfd = by_start(m, WL["memfd"][0])
    from mglrud.model.procfs import MappingHeat
    heat = MappingHeat(memfd.start, memfd.end, "x", "rw-s", SIZE, SIZE, 0, 0, 0, 0.0, ((0, SIZE),))
    assert mapping_node_lru_bytes(heat) == {(0, "anon"): SIZE, (0, "file"): 0}


def test_a_read_without_clear_starts_nothing(tmp_path):
    # The daemon's first cycle and `mglrud snapshot --no-age`: read only, the schedule not started.
    root = fake_proc(tmp_path, SMAPS)
    clock = Clock()
    src = make_source(root, clock)
    [p] = src.read([target()], clear=False).processes
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert p.interval_seconds is None and src.due_in() == float("inf")
    src.read([target()])
    assert (root / str(PID) / "clear_refs").read_text() == "1"
    assert src.due_in() == pytest.approx(30)


def test_a_cgroup_v1_only_host_still_finds_its_processes(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    v1 = "\n".join(line for line in (root / str(PID) / "cgroup").read_text().splitlines() if not line.startswith("0::"))
    (root / str(PID) / "cgroup").write_text(v1 + "\n")
    src = make_source(root, Clock())
    data = src.read([target(), target("memcg", "/**", "all")])
    assert [t.pids for t in data.targets] == [(PID,), (PID,)]
