"""`mglrud report`'s table, rendered from captured snapshots: the golden /proc one and the replayed BPF dumps."""

import json

import pytest

from fixture_snapshots import lru_gen_snapshot, procfs_snapshot
from mglrud import snapshot_json
from mglrud.render import report
from tests.bpf_replay import replayed_snapshot

PROCFS = {"procfs": procfs_snapshot()}
PID = PROCFS["procfs"]["processes"][0]["pid"]


def test_never_accessed_allocations_come_first():
    rs = report.rows(PROCFS, pid=PID)
    # The captured workload's cold [anon], its file and its memfd: 4 MiB each, unreferenced for 60 s.
    assert {r.name for r in rs[:3]} == {"[anon]", "/memfd:mglrud-test", "/tmp/tmp4hc0cqew/data"}
    assert all(r.never == r.resident == 4 << 20 and r.accessed == 0 and r.idle == 60.0 for r in rs[:3])
    nevers = [r.never for r in rs]
    assert nevers == sorted(nevers, reverse=True)
    # The hot [anon] region is referenced almost entirely, so it is far down.
    hot = next(r for r in rs if r.name == "[anon]" and r.accessed == 3993600)
    assert rs.index(hot) > 10 and hot.never == 4194304 - 3993600


def test_only_the_asked_process_or_target():
    assert {r.pid for r in report.rows(PROCFS, pid=PID)} == {PID}
    assert {r.pid for r in report.rows(PROCFS, target="wl")} == {PID, PID + 1}
    assert report.rows(PROCFS, target="nope") == []


def test_anon_file_and_node_split_per_mapping():
    rs = {r.name: r for r in report.rows(PROCFS, pid=PID) if r.idle == 60.0 and r.resident == 4 << 20}
    assert (rs["/memfd:mglrud-test"].anon, rs["/memfd:mglrud-test"].file) == (4 << 20, 0)  # shmem is anon
    assert (rs["/tmp/tmp4hc0cqew/data"].anon, rs["/tmp/tmp4hc0cqew/data"].file) == (0, 4 << 20)
    assert rs["[anon]"].nodes == ((0, 4 << 20),)


def test_text_says_accessed_since_start_is_not_in_a_procfs_snapshot():
    text = report.render(PROCFS, pid=PID)
    lines = text.splitlines()
    assert lines[0].split() == list(report.HEADER)
    first = lines[1].split()
    assert first[5] in ("[anon]", "/memfd:mglrud-test", "/tmp/tmp4hc0cqew/data") and first[8] == "4.0MiB"
    assert "'accessed since start' is not in the snapshot" in text and "latest interval (30s)" in text


def test_first_interval_shows_unknown_not_zero():
    snap = json.loads(json.dumps(PROCFS))
    for p in snap["procfs"]["processes"]:
        p["interval_seconds"] = None
        for m in p["mappings"]:
            m["accessed_bytes"] = m["idle_seconds"] = None
    rs = report.rows(snap, pid=PID)
    assert all(r.accessed is None and r.never is None for r in rs)
    assert "no complete interval yet" in report.render(snap, pid=PID)


@pytest.mark.parametrize("name", ["vm-1node", "vm-2node"])
def test_a_snapshot_without_mapping_data_says_which_sources_to_run(name):
    snap = lru_gen_snapshot(name)
    with pytest.raises(report.ReportError, match="neither the procfs nor the bpf source"):
        report.render(snap, pid=1)


def test_unknown_pid_names_the_targets_there_are():
    with pytest.raises(report.ReportError, match="no resident mapping of pid 1 .*targets in it: wl"):
        report.render(PROCFS, pid=1)


def test_bpf_regions_never_found_accessed_come_first(tmp_path):
    snap, data = replayed_snapshot(tmp_path)
    doc = snapshot_json.to_dict(snap)
    rs = report.rows(doc, target="w")
    assert rs and all(r.source == "hotness" for r in rs)
    assert len(rs) == len({(g.tgid, g.start) for g in data.targets[0].regions})
    nevers = [r.never or 0 for r in rs]
    assert nevers == sorted(nevers, reverse=True)
    for r in rs:  # never-accessed bytes are whole regions never found accessed since start
        assert r.never == (r.resident if r.idle is None else 0)
    text = report.render(doc, target="w")
    assert "hotness: NOT-ACCESSED is the resident bytes of regions never found accessed since start" in text
    assert text.splitlines()[1].split()[5] == "?"  # no procfs in this snapshot to name the mapping


def test_bpf_regions_summed_per_mapping_of_proc_maps(tmp_path):
    snap, data = replayed_snapshot(tmp_path)
    doc = snapshot_json.to_dict(snap)
    from tests.bpf_replay import META

    lo, end = META["address"], META["address"] + META["size"]
    maps = {META["pid"]: [(lo, end, "[anon]"), (end, end + (1 << 30), "/usr/lib/x")]}
    by_region = report.rows(doc, pid=META["pid"])
    rs = report.rows(doc, pid=META["pid"], maps=maps)
    mine = [r for r in rs if (r.start, r.end) == (lo, end)]
    assert len(mine) == 1 and mine[0].name == "[anon]"  # one row for the whole mapping
    inside = [r for r in by_region if lo <= r.start and r.end <= end]
    assert mine[0].accessed == sum(r.accessed for r in inside)
    text = report.render(doc, pid=META["pid"], maps=maps)
    assert "hotness rows are mappings from /proc/PID/maps" in text
