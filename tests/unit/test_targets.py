"""targets.py: memcg globs and process targets resolved to memcgs through /proc/PID/cgroup."""

from pathlib import Path

import pytest

from conftest import captured_roots, paths_for
from mglrud.config import Paths, loads
from mglrud.fs import FS
from mglrud.model.lru_gen import GenHistogram, Generation
from mglrud.sources import lru_gen
from mglrud.targets import memcg_index, nearest_memcg, proc_cgroup, resolve


def _h(mid, path):
    return GenHistogram(mid, path, 0, (Generation(3, 1.0, 1, 1),))


LRUVECS = (_h(1, "/"), _h(2, "/system.slice"), _h(3, "/system.slice/nginx.service"),
           _h(4, "/system.slice/db.service"), _h(9, "/user.slice"))


def _proc_tree(tmp_path, procs):
    """A made-up /proc with just the files targets.py reads (not a capture)."""
    for pid, comm, argv, cgroup in procs:
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "cgroup").write_text(cgroup)
    (tmp_path / "proc" / "self").mkdir(exist_ok=True)
    return FS(Paths(procfs=str(tmp_path / "proc")))


PROCS = [
    (100, "nginx", ["nginx: worker process"], "0::/system.slice/nginx.service\n"),
    (200, "postgres", ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg"], "0::/system.slice/db.service\n"),
    # memory controller not enabled below user.slice: charged to /user.slice
    (300, "python3", ["python3", "/srv/worker.py", "--fast"], "0::/user.slice/user-0.slice/session-1.scope\n"),
    # a hybrid system: v1 lines first
    (400, "bash", ["bash"], "12:memory:/x\n0::/\n"),
]


def test_proc_cgroup():
    assert proc_cgroup("0::/a/b\n") == "/a/b"
    assert proc_cgroup("3:cpu:/x\n0::/\n") == "/"
    assert proc_cgroup("3:memory:/x\n") is None


def test_nearest_memcg_walks_up():
    index = memcg_index(LRUVECS)
    assert nearest_memcg("/system.slice/nginx.service", index) == "/system.slice/nginx.service"
    assert nearest_memcg("/user.slice/user-0.slice/session-1.scope", index) == "/user.slice"
    assert nearest_memcg("/nothing/here", index) == "/"
    assert nearest_memcg("/x", {}) is None


def test_dying_duplicate_loses_to_the_newer_memcg():
    index = memcg_index((_h(5, "/svc"), _h(8, "/svc")))
    assert index == {"/svc": 8}


def test_resolve_every_selector(tmp_path):
    fs = _proc_tree(tmp_path, PROCS)
    cfg = loads("""
targets:
  - {name: services, memcg: "/system.slice/*.service"}
  - {name: pg, comm: postgres}
  - {name: worker, cmdline: 'worker\\.py --fast'}
  - {name: ng, unit: nginx.service}
  - {name: one, pid: 300}
  - {name: absent, comm: redis-server}
  - {name: nomemcg, memcg: /nope/*}
""")
    got = {r.target.name: (r.memcgs, r.problem) for r in resolve(cfg.targets, LRUVECS, fs)}
    assert got == {
        "services": (("/system.slice/nginx.service", "/system.slice/db.service"), ""),
        "pg": (("/system.slice/db.service",), ""),
        "worker": (("/user.slice",), ""),
        "ng": (("/system.slice/nginx.service",), ""),
        "one": (("/user.slice",), ""),
        "absent": ((), "no running process with comm redis-server"),
        "nomemcg": ((), "no memcg in lru_gen matches /nope/*"),
    }


def test_process_vanishing_mid_scan_is_skipped(tmp_path):
    fs = _proc_tree(tmp_path, PROCS)
    (tmp_path / "proc" / "200" / "cgroup").unlink()  # exited between listdir and read
    cfg = loads("targets:\n  - {comm: postgres}\n  - {pid: 4242}\n")
    a, b = resolve(cfg.targets, LRUVECS, fs)
    assert a.memcgs == () and b.memcgs == ()
    assert b.problem == "no running process with pid 4242"


ROOTS = captured_roots()


@pytest.mark.skipif(not ROOTS, reason="no captured fixture roots in tests/fixtures/roots yet")
@pytest.mark.parametrize("root", ROOTS, ids=[r.name for r in ROOTS] or None)
def test_captured_workload_pids_resolve_to_their_memcgs(root):
    fs = FS(Paths(**paths_for(root)))
    lruvecs = lru_gen.read(fs)
    pids = sorted(int(p.name) for p in (root / "proc").iterdir() if p.name.isdigit())
    assert pids, "the capture records the workloads' /proc files"
    targets = "".join(f"  - {{pid: {pid}}}\n" for pid in pids)
    res = resolve(loads("targets:\n" + targets).targets, lruvecs, fs)
    found = {m for r in res for m in r.memcgs}
    assert found and all(m.startswith("/mglrud-fixture/") for m in found), found


def test_a_huge_command_line_is_matched_on_its_first_cmdline_max_bytes_only(monkeypatch):
    """Issue 18 item 1: any user chooses their argv, and the example config's `python3 .*worker\\.py`
    is quadratic in the text searched. A 1 MB argv of "python3 " is read (and so matched) only up
    to CMDLINE_MAX: before the cap the whole megabyte was read and the search ran for minutes."""
    import subprocess
    import sys

    from mglrud import targets
    from mglrud.config import load

    [t] = [t for t in load(str(Path(__file__).parents[2] / "config.example.yaml")).targets if t.kind == "cmdline"]
    assert t.pattern.pattern == r"python3 .*worker\.py"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)"]
                             + [" ".join(["python3"] * 16000)] * 9, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"
        fs = FS(Paths())
        assert len(fs.proc(child.pid, "cmdline").read_bytes()) > 1 << 20
        read = []
        real_open = open

        class Counted:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def read(self, n=-1):
                data = self.f.read(n)
                read.append(len(data))
                return data

        monkeypatch.setattr(targets, "open", lambda *a, **k: Counted(real_open(*a, **k)), raising=False)
        p = targets.read_proc(fs, child.pid, cmdline=True)
        assert sum(read) <= targets.CMDLINE_MAX and len(p.cmdline.encode()) <= targets.CMDLINE_MAX
        assert p.cmdline.startswith(f"{sys.executable} -c import sys") and len(p.cmdline) >= targets.CMDLINE_MAX - 1
        assert not targets.selects(t, p)  # bounded text: one search over 4 KiB
        procs = targets.ProcTable(fs, (t,))
        assert child.pid not in [q.pid for q in procs.of(t)]  # a whole /proc scan, every cmdline capped
        assert max(read) <= targets.CMDLINE_MAX
    finally:
        child.kill()
        child.wait()


def test_a_process_name_or_cgroup_that_is_not_utf8_is_read_not_fatal(tmp_path):
    """Any user can name a process with bytes that are not UTF-8 (prctl(PR_SET_NAME)) and, with a
    delegated cgroup, a cgroup too: read with those bytes escaped, and the scan of every other
    process goes on (seen failing: UnicodeDecodeError out of scan_procs, every cycle)."""
    from mglrud.targets import scan_procs
    fs = _proc_tree(tmp_path, PROCS)
    (tmp_path / "proc" / "100" / "comm").write_bytes(b"ng\xffinx\n")
    (tmp_path / "proc" / "200" / "cgroup").write_bytes(b"0::/user.slice/t\xfe\n")
    procs = {p.pid: p for p in scan_procs(fs, cmdline=True)}
    assert sorted(procs) == [100, 200, 300, 400]
    assert procs[100].comm == "ng\\xffinx"
    assert procs[200].cgroup == "/user.slice/t\\xfe"
