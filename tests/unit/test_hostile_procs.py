"""What another local user's processes can make mglrud do (issue 18, items 8 and 10).

Made-up /proc trees (not captures): a clear_refs that is a symlink, a pid reused by another
process between listing and clearing, and processes named like a target that belong to
another user or cgroup.
"""

import os

import pytest

from mglrud.config import ConfigError, Paths, loads
from mglrud.fs import FS
from mglrud.sources import procfs
from mglrud.targets import ProcTable, resolve, select
from test_procfs_parse import PID, SMAPS, Clock, fake_proc, make_source, target


def _restart(root, pid, start):
    """Give /proc/PID/stat another start time: the pid now belongs to a later process."""
    stat = root / str(pid) / "stat"
    fields = stat.read_text().split(" ")
    fields[21] = str(start)
    stat.write_text(" ".join(fields))


# ---------------------------------------------------------------- item 8: clear_refs

def test_clear_refs_does_not_follow_a_symlink(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    victim = tmp_path / "victim"
    victim.write_text("secret")
    (root / str(PID) / "clear_refs").unlink()
    (root / str(PID) / "clear_refs").symlink_to(victim)
    data = make_source(root, Clock()).read([target()])
    assert victim.read_text() == "secret"  # before the fix: "1ecret"
    assert dict(data.stats.errors)["other"] == 1
    assert "symbolic link" in data.targets[0].problem


def test_a_pid_directory_that_is_a_symlink_is_not_written_through(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    elsewhere = tmp_path / "elsewhere"
    os.rename(root / str(PID), elsewhere)
    (root / str(PID)).symlink_to(elsewhere)
    make_source(root, Clock()).read([target()])
    assert (elsewhere / "clear_refs").read_text() == ""


def test_a_pid_reused_after_listing_is_not_cleared(tmp_path):
    """The cycle lists /proc (and matches comm/cmdline) before aging; the read comes after.
    A pid that meanwhile belongs to another process is not the one the target chose."""
    root = fake_proc(tmp_path, SMAPS)
    fs = FS(Paths(procfs=str(root), sysfs=str(root / "nosys")))
    t = target("comm", "python3")
    procs = ProcTable(fs, (t,))
    procs.all()  # listed now
    _restart(root, PID, 999999)
    data = make_source(root, Clock()).read([t], procs=procs)
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert data.processes == () and dict(data.stats.errors)["exited"] == 1


def test_the_start_time_is_checked_again_right_before_the_write(tmp_path, monkeypatch):
    """The pid is reused between the read of smaps and the clear_refs write."""
    root = fake_proc(tmp_path, SMAPS)
    real = procfs.start_time
    calls = []

    def start_time(fs, pid):
        calls.append(pid)
        st = real(fs, pid)
        if len(calls) == 2:  # the check after reading smaps passes, then the pid is reused
            _restart(root, pid, 999999)
        return st

    monkeypatch.setattr(procfs, "start_time", start_time)
    data = make_source(root, Clock()).read([target()])
    assert len(calls) == 2
    assert (root / str(PID) / "clear_refs").read_text() == ""
    assert dict(data.stats.errors)["exited"] == 1


def test_the_same_process_is_still_cleared(tmp_path):
    root = fake_proc(tmp_path, SMAPS)
    fs = FS(Paths(procfs=str(root), sysfs=str(root / "nosys")))
    t = target("comm", "python3")
    procs = ProcTable(fs, (t,))
    data = make_source(root, Clock()).read([t], procs=procs)
    assert (root / str(PID) / "clear_refs").read_text() == "1"
    assert [p.pid for p in data.processes] == [PID]


# ---------------------------------------------------------------- item 10: comm spoofing

def _status(uid):
    return f"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"


def _spoofed(tmp_path):
    """PID: the real worker (uid 1000, in app.service); two larger impostors of uid 65534 in a user session."""
    root = fake_proc(tmp_path, SMAPS, pids=(PID, PID + 1, PID + 2))
    for pid, uid, cgroup, rss in ((PID, 1000, "/system.slice/app.service", 100),
                                  (PID + 1, 65534, "/user.slice/user-65534.slice/session-9.scope", 5000),
                                  (PID + 2, 65534, "/user.slice/user-65534.slice/session-9.scope", 6000)):
        (root / str(pid) / "status").write_text(_status(uid))
        (root / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
        (root / str(pid) / "statm").write_text(f"9000 {rss} 0 0 0 0 0\n")
    return root, FS(Paths(procfs=str(root), sysfs=str(root / "nosys")))


def _cfg(tmp_path, extra):
    return loads(f"targets:\n  - {{name: app, comm: python3{extra}}}\nprocfs: {{max_processes: 2}}\n")


def test_impostors_push_the_real_process_out_without_a_requirement(tmp_path):
    root, fs = _spoofed(tmp_path)
    [sel] = select(_cfg(tmp_path, "").targets, fs, page_size=4096)
    assert [c.pid for c in sel.candidates][:2] == [PID + 2, PID + 1]  # the risk docs/config.md describes


@pytest.mark.parametrize("extra", [", uid: 1000", ", cgroup: /system.slice/*.service",
                                   ", uid: 1000, cgroup: /system.slice/app.service"])
def test_a_required_uid_or_cgroup_keeps_only_the_real_process(tmp_path, extra):
    root, fs = _spoofed(tmp_path)
    cfg = _cfg(tmp_path, extra)
    [sel] = select(cfg.targets, fs, page_size=4096)
    assert [c.pid for c in sel.candidates] == [PID]
    src = make_source(root, Clock(), max_processes=2)
    data = src.read(cfg.targets, procs=ProcTable(fs, cfg.targets))
    assert data.targets[0].pids == (PID,)
    assert (root / str(PID + 1) / "clear_refs").read_text() == ""
    assert (root / str(PID + 2) / "clear_refs").read_text() == ""


def test_requirements_apply_to_memcg_resolution_too(tmp_path):
    from mglrud.model.lru_gen import GenHistogram, Generation
    root, fs = _spoofed(tmp_path)
    lruvecs = tuple(GenHistogram(i, p, 0, (Generation(3, 1.0, 1, 1),)) for i, p in
                    enumerate(("/", "/system.slice", "/system.slice/app.service", "/user.slice"), 1))
    cfg = _cfg(tmp_path, ", uid: 1000")
    [r] = resolve(cfg.targets, lruvecs, fs, ProcTable(fs, cfg.targets))
    assert r.memcgs == ("/system.slice/app.service",)


def test_a_pid_target_with_a_uid_that_does_not_match_selects_nothing(tmp_path):
    root, fs = _spoofed(tmp_path)
    cfg = loads(f"targets: [{{pid: {PID + 1}, uid: 1000}}]\n")
    assert ProcTable(fs, cfg.targets).of(cfg.targets[0]) == []


@pytest.mark.parametrize("yaml, key, words", [
    ("targets: [{comm: x, uid: -1}]", "targets[0].uid", "integer from 0"),
    ("targets: [{comm: x, uid: '1000'}]", "targets[0].uid", "integer from 0"),
    ("targets: [{comm: x, cgroup: system.slice}]", "targets[0].cgroup", "starting with '/'"),
    ("targets: [{comm: x, cgroup: /a/../b}]", "targets[0].cgroup", "'..'"),
    ("targets: [{comm: x, cgroup: '/a**'}]", "targets[0].cgroup", "**"),
    ("targets: [{memcg: /a, uid: 0}]", "targets[0].uid", "process targets"),
    ("targets: [{memcg: /a, cgroup: /a}]", "targets[0].cgroup", "process targets"),
])
def test_requirement_errors_name_the_key(yaml, key, words):
    with pytest.raises(ConfigError) as e:
        loads(yaml)
    assert e.value.key == key and words in str(e.value)
