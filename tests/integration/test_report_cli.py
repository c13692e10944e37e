"""`mglrud report --pid` against a running `mglrud run` (the /proc source) and the hot/cold workload.

The daemon's only target is the workload's pid, so it clears the accessed bits
of no other process on this machine. It listens on 127.0.0.1 with port 0 (the
kernel picks a free one; the test reads it from the log) and on a unix socket in
the test's directory: the report needs addresses, which only the socket (root's)
serves; over TCP without authentication they are redacted (docs/security.md).
Both processes are stopped by their pids.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc, start_workload, stop_process

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("procfs_workload.py")
SIZE = 32 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: clear_refs of the workload"),
    pytest.mark.skipif(Path("/sys/kernel/mm/lru_gen/enabled").exists(),
                       reason="this kernel has MGLRU: `sources: auto` would not pick /proc"),
]


@pytest.fixture
def workload():
    proc, info = start_workload([sys.executable, str(WORKLOAD), "--size", str(SIZE), "--seconds", "300"])
    try:
        yield info  # printed once every region is resident
    finally:
        stop_process(proc)


@pytest.fixture
def daemon(tmp_path, workload):
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text("aging: {interval: 2s}\nsnapshot: {interval: 1s}\nmetrics: {cold_thresholds: [2s, 4s]}\n"
                   "procfs: {clear_refs: true}\n"  # explicitly: it needs accessed bytes (off by default)
                   f"targets: [{{name: wl, pid: {workload['pid']}}}]\n")
    d = DaemonProc.start(["-c", str(cfg), "--listen.address", "127.0.0.1", "--listen.port", "0"],
                         tmp_path / "mglrud.log", wait=60)
    try:
        yield d.full, workload, d  # its listen.socket (DaemonProc gives it one)
    finally:
        d.stop()


def _cold_mapping_measured(url: str, pid: int, start: int) -> bool:
    from mglrud.client import _get_unix
    snap = json.loads(_get_unix(url[len("unix:"):], 10))
    for p in (snap.get("procfs") or {}).get("processes", ()):
        if p["pid"] == pid:
            return any(int(m["start"], 16) == start and m["accessed_bytes"] is not None for m in p["mappings"])
    return False


def test_report_lists_the_never_touched_mapping_first(daemon):
    url, info, log = daemon
    pid, (cold_start, cold_end) = info["pid"], info["cold"]
    deadline = time.monotonic() + 90
    while not _cold_mapping_measured(url, pid, cold_start):
        assert time.monotonic() < deadline, "no complete interval for the workload:\n" + log.log_text()
        time.sleep(0.5)

    out = subprocess.run([sys.executable, "-m", "mglrud", "report", "--pid", str(pid), "--url", url],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["SOURCE", "PID", "COMM", "START", "END", "MAPPING"]
    first = lines[1].split()
    # The cold region was written once before the daemon started and never since: it leads.
    assert (first[0], int(first[1]), int(first[3], 16), int(first[4], 16), first[5]) == \
        ("procfs", pid, cold_start, cold_end, "[anon]"), out.stdout
    assert first[8] == "32.0MiB", out.stdout  # NOT-ACCESSED: all of it
    # The hot region, rewritten all interval long, is listed but well below it.
    hot = next(i for i, l in enumerate(lines) if l.split()[3:4] == [f"{info['hot'][0]:#x}"])
    assert hot > 1
    assert "'accessed since start' is not in the snapshot" in out.stdout


def test_report_for_a_pid_that_is_not_a_target_fails_in_one_line(daemon):
    url, info, log = daemon
    out = subprocess.run([sys.executable, "-m", "mglrud", "report", "--pid", "1", "--url", url],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("mglrud: report: ") and len(out.stderr.splitlines()) == 1, out.stderr


def test_over_unauthenticated_tcp_the_report_gets_no_addresses_and_says_so(daemon):
    url, info, d = daemon
    out = subprocess.run([sys.executable, "-m", "mglrud", "report", "--target", "wl", "--url", d.base],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert "redacted snapshot" in out.stderr and f"{info['cold'][0]:#x}" not in out.stdout, out.stderr
