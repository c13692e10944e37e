"""The /proc source against real processes on this host (no MGLRU needed).

Every process started here is stopped here, by its pid; every wait is a bounded
loop on something the process reports, never a timed assertion.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mglrud.config import Paths, Target
from mglrud.fs import FS
from mglrud.sources import procfs

WORKLOAD = Path(__file__).with_name("procfs_workload.py")
REPO = Path(__file__).resolve().parents[2]
SIZE = 64 << 20  # far beyond the TLB's reach, so the few pages it hides do not matter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="clear_refs of another process needs root")


def target(pid: int, name: str = "wl") -> Target:
    return Target(name=name, kind="pid", value=pid, interval=3600.0, can_swap=True, force_scan=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def workload(tmp_path):
    passes = tmp_path / "passes"
    proc = subprocess.Popen([sys.executable, str(WORKLOAD), "--size", str(SIZE), "--passes", str(passes),
                             "--seconds", "600"], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        info["passes"] = passes
        yield info
    finally:
        stop(proc)


def passes_done(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def wait_for_passes(path: Path, n: int) -> None:
    # A bound, not a measurement: a busy machine may be slow, a stuck workload must not hang the suite.
    deadline = time.monotonic() + 300
    while passes_done(path) < n:
        assert time.monotonic() < deadline, f"workload did not reach {n} passes"
        time.sleep(0.05)


def mapping(heat: procfs.ProcessHeat, start: int):
    [m] = [m for m in heat.mappings if m.start == start]
    return m


def test_hot_mapping_is_accessed_cold_is_not(workload):
    src = procfs.ProcfsSource(FS(Paths()), clear_refs=True)  # explicitly: it measures accessed bytes
    first = src.read([target(workload["pid"])], force=True)
    [p] = first.processes
    assert p.interval_seconds is None  # the first read only starts an interval
    wait_for_passes(workload["passes"], passes_done(workload["passes"]) + 3)
    second = src.read([target(workload["pid"])], force=True)
    [p] = second.processes
    hot, cold = mapping(p, workload["hot"][0]), mapping(p, workload["cold"][0])
    assert hot.resident_bytes == cold.resident_bytes == SIZE
    assert hot.anon_bytes == SIZE and hot.name == "[anon]"
    assert hot.accessed_bytes >= 0.9 * SIZE, hot
    assert cold.accessed_bytes <= 0.01 * SIZE, cold
    assert hot.idle_seconds == 0 and cold.idle_seconds > 0
    assert p.interval_seconds > 0
    assert dict(second.stats.errors) == dict.fromkeys(procfs.REASONS, 0)
    assert second.stats.reads == 2 and second.stats.bytes_scanned >= 4 * SIZE


def test_mglrud_never_reads_itself():
    me = os.getpid()
    data = procfs.ProcfsSource(FS(Paths())).read([target(me, "self")], force=True)
    assert data.processes == () and data.targets[0].pids == ()


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.mark.parametrize("when", ["smaps", "clear_refs"])
def test_a_process_that_exits_mid_read_is_counted(monkeypatch, when):
    proc = sleeper()
    try:
        original = procfs._read if when == "smaps" else procfs._clear_refs

        def exit_first(fs, pid, *args):
            # The process really exits (and is reaped) right at this step of the read.
            if pid == proc.pid and proc.poll() is None:
                stop(proc)
            return original(fs, pid, *args)

        monkeypatch.setattr(procfs, "_read" if when == "smaps" else "_clear_refs", exit_first)
        src = procfs.ProcfsSource(FS(Paths()), clear_refs=True)  # explicitly: "clear_refs" exits there
        data = src.read([target(proc.pid)], force=True)
        assert proc.poll() is not None
        assert data.processes == ()
        assert dict(data.stats.errors)["exited"] == 1
        assert data.targets[0].pids == () and "exited" in data.targets[0].problem
    finally:
        stop(proc)


NOBODY_READER = """
import json, sys
from mglrud.config import Paths, Target
from mglrud.fs import FS
from mglrud.sources import procfs
pid = int(sys.argv[1])
t = Target(name="root-owned", kind="pid", value=pid, interval=60.0, can_swap=True, force_scan=True)
data = procfs.ProcfsSource(FS(Paths()), clear_refs=True).read([t], force=True)  # as before: read and clear
print(json.dumps({"problem": data.targets[0].problem, "errors": dict(data.stats.errors),
                  "processes": len(data.processes)}))
"""


def test_a_reader_without_ptrace_access_gets_a_clear_reason():
    # mglrud as user nobody against a process of root: the kernel refuses smaps (ptrace check).
    proc = sleeper()
    try:
        out = subprocess.run([sys.executable, "-c", NOBODY_READER, str(proc.pid)], user="nobody", group="nogroup",
                             cwd="/", env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
    finally:
        stop(proc)
    assert result["processes"] == 0
    assert result["errors"]["eperm"] == 1
    problem = result["problem"]
    assert f"permission denied reading /proc/{proc.pid}" in problem
    assert "uid 65534" in problem and "ptrace" in problem
