"""`mglrud report --pid` against a running `mglrud run` (the /proc source) and the hot/cold workload.

The daemon's only target is the workload's pid, so it clears the accessed bits
of no other process on this machine. It listens on 127.0.0.1 with port 0 (the
kernel picks a free one; the test reads it from the log). Both processes are
stopped by their pids.
"""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("procfs_workload.py")
SIZE = 32 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: clear_refs of the workload"),
    pytest.mark.skipif(Path("/sys/kernel/mm/lru_gen/enabled").exists(),
                       reason="this kernel has MGLRU: `sources: auto` would not pick /proc"),
]


def _lines(stream, q):
    for line in stream:
        q.put(line)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this pid only
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def workload():
    proc = subprocess.Popen([sys.executable, str(WORKLOAD), "--size", str(SIZE), "--seconds", "300"],
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())  # printed once every region is resident
        yield info
    finally:
        _stop(proc)


@pytest.fixture
def daemon(tmp_path, workload):
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text("aging: {interval: 2s}\nsnapshot: {interval: 1s}\nmetrics: {cold_thresholds: [2s, 4s]}\n"
                   f"targets: [{{name: wl, pid: {workload['pid']}}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "mglrud", "run", "-c", str(cfg),
                             "--listen.address", "127.0.0.1", "--listen.port", "0"],
                            cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    log = []
    try:
        port = None
        deadline = time.monotonic() + 60  # a bound for a busy machine, not a timing
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "mglrud exited:\n" + "".join(log)
                continue
            log.append(line)
            if m := re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", line):
                port = int(m.group(1))
        assert port, "mglrud did not start serving:\n" + "".join(log)
        yield f"http://127.0.0.1:{port}", workload, log
    finally:
        _stop(proc)


def _cold_mapping_measured(url: str, pid: int, start: int) -> bool:
    with urllib.request.urlopen(f"{url}/snapshot.json", timeout=10) as r:
        snap = json.loads(r.read())
    for p in (snap.get("procfs") or {}).get("processes", ()):
        if p["pid"] == pid:
            return any(int(m["start"], 16) == start and m["accessed_bytes"] is not None for m in p["mappings"])
    return False


def test_report_lists_the_never_touched_mapping_first(daemon):
    url, info, log = daemon
    pid, (cold_start, cold_end) = info["pid"], info["cold"]
    deadline = time.monotonic() + 90
    while not _cold_mapping_measured(url, pid, cold_start):
        assert time.monotonic() < deadline, "no complete interval for the workload:\n" + "".join(log)
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
