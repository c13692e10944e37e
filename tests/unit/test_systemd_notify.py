"""systemd.py: the sd_notify protocol against a socket the test binds, the watchdog, STATUS=.

The daemon-level half (READY=1 after the first snapshot, pings from the loop,
RELOADING=1/READY=1 around SIGHUP, a stuck loop stopping the pings) is in
tests/integration/test_notify_daemon.py.
"""

import logging
import os
import socket

import pytest

from mglrud import systemd
from mglrud.daemon import status_line
from mglrud.model import AgingStats, Snapshot, SourceStatus, TargetState


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A unix datagram socket standing in for systemd's; yields a function returning received messages."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))

    def received() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except socket.timeout:
                return out

    yield received
    sock.close()


def test_notify_sends_one_datagram_of_lines(notify_socket):
    assert systemd.notify("READY=1", "STATUS=serving on 127.0.0.1:9746")
    assert notify_socket() == ["READY=1\nSTATUS=serving on 127.0.0.1:9746"]


def test_notify_abstract_socket(monkeypatch):
    name = f"mglrud-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_to_a_dead_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not ours to speak
    assert systemd.notify("READY=1") is False


def test_monotonic_usec_is_clock_monotonic():
    import time
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= systemd.monotonic_usec() <= before + 5_000_000


@pytest.mark.parametrize("env,timeout", [
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({"WATCHDOG_USEC": "4000000"}, 4.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}, 4.0),  # we are pid 4242 below
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
])
def test_watchdog_from_env(env, timeout):
    wd = systemd.Watchdog.from_env(env, pid=4242)
    assert wd.timeout == timeout
    assert wd.enabled is (timeout is not None)
    assert wd.interval == (timeout / 2 if timeout else float("inf"))


def test_watchdog_pings_are_rate_limited(notify_socket):
    now = [100.0]
    wd = systemd.Watchdog(4.0, clock=lambda: now[0])
    assert wd.ping()  # first one at once
    now[0] += 0.5
    assert not wd.ping()  # a loop woken early does not flood the manager
    now[0] += 0.6  # 1.1 s > timeout / 4
    assert wd.ping()
    assert notify_socket() == ["WATCHDOG=1", "WATCHDOG=1"]


def test_disabled_watchdog_sends_nothing(notify_socket):
    wd = systemd.Watchdog(None)
    assert not wd.ping()
    assert notify_socket() == []


def test_journal_handler_only_when_stderr_is_the_journal(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert systemd.journal_handler() is None
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # not our stderr
    assert systemd.journal_handler() is None
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert systemd.journal_handler() is None


def test_journal_handler_when_stderr_matches(monkeypatch, tmp_path):
    pytest.importorskip("systemd.journal", reason="python3-systemd not installed")
    with open(tmp_path / "stderr", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setattr("sys.stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        handler = systemd.journal_handler()
    assert isinstance(handler, logging.Handler)


def _snap(up=True, errors=(("einval", 2), ("eperm", 1))):
    return Snapshot(
        taken_at=0, page_size=4096, cold_thresholds=(60.0,), idle_age_buckets=(60.0,),
        targets=(TargetState("web", "memcg", "/web/*", ("/web/a", "/web/b")),
                 TargetState("db", "comm", "postgres", (), "no running process with comm postgres")),
        sources=(SourceStatus("lru_gen", up, "" if up else "debugfs not mounted"),),
        aging=AgingStats(runs=40, errors=errors))


def test_status_line():
    assert status_line(_snap(), "127.0.0.1:9746") == (
        "serving 127.0.0.1:9746; lru_gen up; 2 memcgs in 1/2 targets; 40 agings, 3 errors")
    assert status_line(_snap(up=False), "127.0.0.1:9746", "reload failed, previous config in force: x") == (
        "serving 127.0.0.1:9746; lru_gen DOWN; 2 memcgs in 1/2 targets; 40 agings, 3 errors; "
        "reload failed, previous config in force: x")
    assert status_line(None) == "starting"
    assert "\n" not in status_line(_snap(), "a", "two\nlines")
