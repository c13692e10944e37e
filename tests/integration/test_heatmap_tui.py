"""`mglrud heatmap` driven in tmux against a running `mglrud run` (the /proc source) and without one.

The daemon's only target is the hot/cold workload's pid (procfs_workload.py), so
nothing else on this machine has its accessed bits cleared; it listens on
127.0.0.1 with a port the kernel picks. The TUI runs in a tmux server on its own
socket (`tmux -L`), 120x40; keys go in with send-keys, the screen comes back with
capture-pane. Every wait is bounded; teardown kills that tmux server only and
stops the processes the test started by their pids.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc, start_workload, stop_process

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("procfs_workload.py")
SIZE = 8 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
WAIT = 90  # a bound for a busy machine, not a timing

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: clear_refs of the workload"),
    pytest.mark.skipif(Path("/sys/kernel/mm/lru_gen/enabled").exists(),
                       reason="this kernel has MGLRU: `sources: auto` would not pick /proc"),
]


@pytest.fixture
def workload():
    proc, info = start_workload([sys.executable, str(WORKLOAD), "--size", str(SIZE), "--seconds", "600"])
    try:
        yield info
    finally:
        stop_process(proc)


@pytest.fixture
def daemon(tmp_path, workload):
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text("aging: {interval: 2s}\nsnapshot: {interval: 1s}\nmetrics: {cold_thresholds: [2s, 4s]}\n"
                   "procfs: {clear_refs: true}\n"  # explicitly: it needs accessed bytes (off by default)
                   f"targets: [{{name: wl, pid: {workload['pid']}}}]\n")
    # a short socket path: the TUI's status line names it and must keep room for PAUSED
    run = tempfile.mkdtemp(prefix="m")
    d = DaemonProc.start(["-c", str(cfg), "--listen.address", "127.0.0.1", "--listen.port", "0",
                          "--listen.socket", f"{run}/s"], tmp_path / "mglrud.log")
    try:
        deadline = time.monotonic() + WAIT
        while not _measured(d, workload["pid"], workload["hot"][0]):
            assert time.monotonic() < deadline, "no complete interval:\n" + d.log_text()
            time.sleep(0.5)
        yield d
    finally:
        d.stop()
        shutil.rmtree(run, ignore_errors=True)


def _measured(d: DaemonProc, pid: int, start: int) -> bool:
    snap = d.snapshot()  # the full view, from the daemon's socket
    return any(p["pid"] == pid and any(int(m["start"], 16) == start and m["accessed_bytes"] for m in p["mappings"])
               for p in (snap.get("procfs") or {}).get("processes", ()))


class Tmux:
    """One tmux server on its own socket running the heatmap; killed (that server only) at the end."""

    def __init__(self, name: str, command: str):
        self.sock = name
        # After the TUI exits, its status stays on screen for the test to read.
        self._run("new-session", "-d", "-x", "120", "-y", "40", "-s", "hm",
                  f"cd {REPO} && env PYTHONPATH={REPO} TERM=xterm {command}; echo EXIT=$?; sleep 600")

    def _run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    def keys(self, *keys: str) -> None:
        self._run("send-keys", "-t", "hm", *keys)

    def resize(self, x: int, y: int) -> None:
        self._run("resize-window", "-t", "hm", "-x", str(x), "-y", str(y))

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", "hm")

    def wait(self, what: str, ok, timeout: float = WAIT) -> str:
        """The screen once ok(screen) holds; fails with the last screen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if ok(s):
                return s
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not on screen after {timeout:.0f}s:\n{s}")
            time.sleep(0.3)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=30)
        # tmux can leave the socket file of a killed server behind
        Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", self.sock).unlink(missing_ok=True)


@pytest.fixture
def tmux():
    if not shutil.which("tmux"):
        pytest.fail("tmux is missing: scripts/install-deps test installs it")
    started = []

    def start(command: str) -> Tmux:
        t = Tmux(f"mglrud-hm-{os.getpid()}-{len(started)}", command)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


def body(screen: str) -> list[tuple[int, str, str]]:
    """(start address, label, cells) of every heatmap row on screen."""
    out = []
    for line in screen.splitlines():
        if m := re.match(r"(0x[0-9a-f]+) (.*?)\s*\|(.*)\|$", line):
            out.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def status(screen: str) -> str:
    """Both status lines as one: mode | pid | freshness | overlay | aging | aggregate [| zoom]."""
    lines = screen.splitlines()
    i = next((i for i, l in enumerate(lines) if l.startswith("overlay ")), None)
    return "" if i is None else lines[i - 1].strip() + " | " + lines[i].strip()


def columns(screen: str) -> tuple[int, float]:
    m = re.search(r"(\d+) x ([\d.]+)s columns", screen)
    return (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)


def band_of(screen: str, address: int) -> int:
    rows = body(screen)
    return max(i for i, (start, _, _) in enumerate(rows) if start <= address)


def test_tui_attached_overlays_intervals_zoom_pause_quit(daemon, workload, tmux):
    hot, cold, pid = workload["hot"][0], workload["cold"][0], workload["pid"]
    t = tmux(f"{sys.executable} -m mglrud heatmap --pid {pid} --url {daemon.full} --aggregate 1")
    s = t.wait("attached mode and a few columns", lambda s: f"attached to daemon {daemon.full}" in status(s)
               and columns(s)[0] >= 6)
    assert f"pid {pid}" in status(s) and "aging daemon's" in status(s) and "aggregate 1s" in status(s)
    assert "heat (hottest part" in s

    # zoom into the band holding the hot mapping: afterwards hot and cold mappings have rows of their own
    for _ in range(band_of(s, hot)):
        t.keys("j")
    t.keys("z")

    def window(s):
        m = re.search(r"zoom 1: (0x[0-9a-f]+)-(0x[0-9a-f]+)", status(s))
        return tuple(int(x, 16) for x in m.groups()) if m else None

    def zoomed(s):  # the whole zoomed frame drawn (tmux may show a redraw half done)
        w = window(s)
        return w is not None and all(w[0] <= start < w[1] for start, _, _ in body(s))

    s = t.wait("zoom", zoomed)
    lo, hi = window(s)
    assert lo <= hot < hi, s
    while not any(start == hot for start, _, _ in body(s)):  # zoom further until the hot mapping is a row
        t.keys(*["j"] * band_of(s, hot), "z")
        depth = int(re.search(r"zoom (\d+):", status(s)).group(1))
        s = t.wait("deeper zoom", lambda x: f"zoom {depth + 1}:" in status(x) or "cannot zoom" in x)
        assert "cannot zoom further" not in s, s
    hot_row = next(r for r in body(s) if r[0] == hot)
    assert hot_row[1] == "[anon]" and hot_row[2].rstrip().endswith("@"), s
    t.keys("Z")
    s = t.wait("zoom out", lambda s: "zoomed out" in s)
    t.keys(*["Z"] * 5)
    s = t.wait("all the way out", lambda s: "zoom " not in status(s) and "not zoomed" in s)

    # overlays: node digits, then anon/file letters, then heat again
    t.keys("2")
    s = t.wait("node overlay", lambda s: "overlay node" in status(s))
    cells = "".join(c for _, _, c in body(s)).replace(" ", "")
    assert cells and set(cells) <= set("0123456789?"), s
    assert "NUMA node" in s
    t.keys("3")
    s = t.wait("lru overlay", lambda s: "overlay lru" in status(s))
    cells = "".join(c for _, _, c in body(s)).replace(" ", "")
    assert cells and set(cells) <= set("af?") and "a" in cells and "f" in cells, s
    t.keys("o")
    s = t.wait("heat overlay", lambda s: "overlay heat" in status(s))
    assert set("".join(c for _, _, c in body(s)).replace(" ", "")) <= set(".:-=+*#%@?")

    # aggregation: 1 s -> 2 s columns; the same history in about half as many columns
    n1, _ = columns(s)
    t.keys("]")
    s = t.wait("aggregation 2s", lambda s: "aggregate 2s" in status(s))
    n2, width = columns(s)
    assert width == 2.0 and n2 < n1 and n2 >= n1 // 2 - 1, (n1, n2)
    assert "aggregation interval now 2s" in s
    t.keys("[")
    s = t.wait("aggregation back to 1s", lambda s: "aggregate 1s" in status(s))

    # aging: the daemon's; refused with the reason when attached
    t.keys("A")
    s = t.wait("aging refused", lambda s: "aging interval unavailable when attached" in s)
    assert "aging daemon's" in status(s)

    # pause: no new columns while paused, new ones after
    t.keys("p")
    s = t.wait("paused", lambda s: "PAUSED" in status(s))
    frozen = columns(s)[0]
    # the positive signal: the daemon published three snapshots after the pause (interval 1 s)
    paused_at = daemon.snapshot()["taken_at"]
    deadline = time.monotonic() + WAIT
    while daemon.snapshot()["taken_at"] < paused_at + 3:
        assert time.monotonic() < deadline, "the daemon published no new snapshots"
        time.sleep(0.3)
    assert columns(t.screen())[0] == frozen
    t.keys("p")
    t.wait("resumed and growing", lambda s: "PAUSED" not in status(s) and columns(s)[0] > frozen)

    t.keys("q")
    t.wait("exit 0", lambda s: "EXIT=0" in s)


def test_tui_own_session_without_a_daemon(workload, tmux, tmp_path):
    hot, pid = workload["hot"][0], workload["pid"]
    # the session's source settings come from --config: clear_refs on, explicitly, since the
    # heat columns need accessed bytes (off by default)
    cfg = tmp_path / "own.yaml"
    cfg.write_text("procfs: {clear_refs: true}\n")
    # nothing listens on port 1 of 127.0.0.1 (a privileged port no test uses)
    t = tmux(f"{sys.executable} -m mglrud heatmap --pid {pid} --config {cfg} --url http://127.0.0.1:1 "
             f"--aging 2 --aggregate 1")
    s = t.wait("own session", lambda s: "own session (procfs): no daemon at http://127.0.0.1:1" in status(s))
    assert "aging 2s" in status(s)
    s = t.wait("a measured interval", lambda s: any(c.rstrip().endswith("@") for _, _, c in body(s)))
    t.keys("A")  # 2 s -> 3 s: the session's own schedule
    s = t.wait("aging 3s", lambda s: "aging 3s" in status(s))
    assert "aging interval now 3s" in s
    t.keys("a", "a")
    s = t.wait("aging 1s", lambda s: "aging 1s" in status(s))
    wide = max(len(line) for line in s.splitlines())
    t.resize(80, 20)  # the frame follows the terminal: narrower rows, fewer bands
    s = t.wait("resized", lambda s: len(s.splitlines()) <= 20 and body(s)
               and all(len(line) <= 80 for line in s.splitlines()) and status(s))
    assert wide > 80 and len(body(s)) <= 20 - 5 and max(len(line) for line in s.splitlines()) == 80, s
    t.keys("p")
    s = t.wait("paused", lambda s: "PAUSED" in status(s) and "no aging" in s)
    t.keys("q")
    t.wait("exit 0", lambda s: "EXIT=0" in s)


def _heatmap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mglrud", "heatmap", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_png_against_the_daemon_has_the_hot_mapping_in_the_hot_colour(daemon, workload, tmp_path):
    from mglrud.render import png

    out = tmp_path / "hm.png"
    r = _heatmap("--pid", str(workload["pid"]), "--url", daemon.full, "--png", str(out), "--columns", "2",
                 "--aggregate", "1")
    assert r.returncode == 0, r.stderr
    layout, colour = png.read_newest_cells(out)
    assert layout["columns"] == 2
    assert colour[workload["hot"][0]] == png.HOT and colour[workload["cold"][0]] == png.HEAT[0], colour


def test_bad_input_fails_in_one_line(daemon, workload, tmp_path):
    pid = str(workload["pid"])
    cases = [
        (["--pid", pid, "--url", daemon.full, "--png", "/nonexistent-dir/x.png"], "directory /nonexistent-dir does not exist"),
        (["--pid", pid, "--url", daemon.full, "--png", str(tmp_path)], "is a directory"),
        (["--pid", "4194304", "--url", daemon.full, "--png", str(tmp_path / "a.png")], "no process 4194304"),
        (["--target", "nope", "--url", daemon.full, "--png", str(tmp_path / "b.png")],
         "the daemon has no target 'nope'; its targets: wl"),
        (["--pid", "1", "--url", daemon.full, "--png", str(tmp_path / "c.png")], "the daemon has no data for pid 1"),
        (["--target", "wl", "--url", "http://127.0.0.1:1", "--png", str(tmp_path / "d.png")],
         "no daemon to ask, and no target 'wl'"),
        (["--pid", pid, "--url", daemon.full], "needs a terminal"),
    ]
    for args, message in cases:
        r = _heatmap(*args)
        assert r.returncode == 1 and r.stdout == "", (args, r)
        assert r.stderr.startswith("mglrud: heatmap: ") and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not list(tmp_path.glob("*.png"))
