"""`mglrud run` under a fake systemd: the notify socket is a datagram socket this test binds.

READY=1 once the first snapshot is published and /metrics served; WATCHDOG=1
from the aging loop at WATCHDOG_USEC/2 or faster; RELOADING=1 (+ MONOTONIC_USEC)
then READY=1 around SIGHUP, with STATUS= saying when a bad config was refused;
no pings while the loop is stuck in a kernel file (lru_gen replaced by a FIFO
nobody writes: open() blocks as a hung debugfs read would), pings again once it
returns; STOPPING=1 on SIGTERM. Every wait is bounded; the daemon is stopped by pid.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WAIT = 120  # the host may be busy building a kernel
WATCHDOG_USEC = 2_000_000

CONFIG = """
aging: {interval: 1s, dry_run: true}
snapshot: {interval: 1s}
metrics: {cold_thresholds: [1s, 2s]}
targets: [{name: all, memcg: "/**"}]
"""


def _root(tmp_path: Path) -> Path:
    roots = sorted(p.parent.parent for p in (REPO / "tests/fixtures").glob("roots/*/debugfs/lru_gen"))
    if not roots:
        pytest.skip("no captured fixture root in tests/fixtures/roots")
    root = tmp_path / "root"
    shutil.copytree(roots[0], root)
    return root


class Manager:
    """The systemd side: the notify socket and the messages received on it, in order."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.backlog: list[str] = []  # received, not yet looked at

    def collect(self, seconds: float) -> list[str]:
        out, self.backlog = self.backlog, []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                out.append(self.sock.recv(65536).decode())
            except socket.timeout:
                break
        return out

    def wait_for(self, pred, what: str, proc: subprocess.Popen) -> tuple[str, list[str]]:
        """The first message matching pred; the ones after it stay in the backlog."""
        seen, end = [], time.monotonic() + WAIT
        while time.monotonic() < end:
            batch = self.collect(0.5)
            for i, m in enumerate(batch):
                seen.append(m)
                if pred(m):
                    self.backlog = batch[i + 1:]
                    return m, seen
            if proc.poll() is not None:
                pytest.fail(f"mglrud exited ({proc.returncode}) waiting for {what}; last: {seen[-5:]}")
        pytest.fail(f"timed out waiting for {what}; last: {seen[-5:]}")


def _fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines())


def test_notify_protocol(tmp_path):
    root = _root(tmp_path)
    config = tmp_path / "mglrud.yaml"
    config.write_text(CONFIG)
    manager = Manager(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(manager.path), WATCHDOG_USEC=str(WATCHDOG_USEC),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("WATCHDOG_PID", None)
    flags = [f"--path.{k}={root / d}" for k, d in (("procfs", "proc"), ("sysfs", "sys"), ("debugfs", "debugfs"),
                                                   ("cgroupfs", "cgroup"), ("tracefs", "tracing"))]
    log = open(tmp_path / "mglrud.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mglrud", "run", "--config", str(config), "--listen.port", "0",
                             *flags], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    lru_gen = root / "debugfs/lru_gen"
    try:
        # READY=1 comes once, with the STATUS= summary of the first snapshot.
        ready, before = manager.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", proc)
        assert not [m for m in before if m != ready], f"nothing before READY=1: {before}"
        status = _fields(ready)["STATUS"]
        m = re.fullmatch(r"serving 127\.0\.0\.1:(\d+); lru_gen up; (\d+) memcgs in 1/1 targets; "
                         r"\d+ agings, 0 errors", status)
        assert m, status
        base = f"http://127.0.0.1:{m.group(1)}"
        with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
            assert r.status == 200

        # Pings from the loop: at least one per half WatchdogSec.
        msgs = manager.collect(3 * WATCHDOG_USEC / 1e6)
        pings = [m for m in msgs if m == "WATCHDOG=1"]
        assert len(pings) >= 3, msgs

        # A good reload, then a bad one: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        config.write_text(CONFIG.replace("name: all", "name: everything"))
        proc.send_signal(signal.SIGHUP)
        reloading, _ = manager.wait_for(lambda m: m.startswith("RELOADING=1"), "RELOADING=1", proc)
        usec = int(_fields(reloading)["MONOTONIC_USEC"])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < WAIT * 1_000_000
        ready, _ = manager.wait_for(lambda m: m.startswith("READY=1"), "READY=1 after reload", proc)
        assert "reload failed" not in ready

        config.write_text(CONFIG.replace("interval: 1s, dry", "interval: -1s, dry"))
        proc.send_signal(signal.SIGHUP)
        manager.wait_for(lambda m: m.startswith("RELOADING=1"), "RELOADING=1", proc)
        ready, _ = manager.wait_for(lambda m: m.startswith("READY=1"), "READY=1 after a bad reload", proc)
        assert _fields(ready)["STATUS"].endswith(
            "reload failed, previous config in force: aging.interval: must be longer than zero, got '-1s'"), ready

        # The loop stuck in a kernel file: no pings, while /metrics keeps serving.
        os.rename(lru_gen, lru_gen.with_name("lru_gen.real"))
        os.mkfifo(lru_gen)
        manager.collect(2.5)  # the next cycle starts within snapshot.interval and blocks
        stuck = manager.collect(1.5 * WATCHDOG_USEC / 1e6)
        assert "WATCHDOG=1" not in stuck, f"pings went on while the loop was stuck: {stuck}"
        with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
            assert r.status == 200
            assert b"mglrud_snapshot_age_seconds" in r.read()

        # The kernel answers again: the loop runs and pings resume.
        fd = os.open(lru_gen, os.O_WRONLY | os.O_NONBLOCK)  # the daemon is the reader, so this opens
        os.replace(lru_gen.with_name("lru_gen.real"), lru_gen)
        os.write(fd, lru_gen.read_bytes())
        os.close(fd)
        manager.wait_for(lambda m: m == "WATCHDOG=1", "pings after the loop came back", proc)

        proc.send_signal(signal.SIGTERM)
        manager.wait_for(lambda m: m.startswith("STOPPING=1"), "STOPPING=1", proc)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        log.close()
        manager.sock.close()
    text = (tmp_path / "mglrud.log").read_text()
    assert "Traceback" not in text, text
    assert "systemd watchdog: 2s" in text
