"""Signals in the daemon (issue 18, item 13): the handlers take no lock; a self-pipe wakes the loop.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread is inside threading.Event.wait() holding the Event's lock; Event.set() in the handler
then waits for a lock its own thread holds. The daemon now waits on select(2) over the socket
signal.set_wakeup_fd() writes to, and its handlers do nothing.
"""

import dataclasses
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from mglrud.config import from_dict
from mglrud.daemon import Daemon


def test_the_signal_handler_takes_no_lock(monkeypatch):
    d = Daemon(from_dict({}), lambda: None, engine=SimpleNamespace())
    taken = []

    def spy(self, *a, **kw):
        taken.append(self)
        raise AssertionError("a lock taken in a signal handler")

    monkeypatch.setattr(threading.Event, "set", spy)
    monkeypatch.setattr(threading.Condition, "__enter__", spy)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        d._on_signal(sig, None)
    assert taken == []


class _Engine:
    """Nothing due for an hour: the loop sleeps until a signal wakes it."""

    def __init__(self):
        self.cycles = 0
        self.configured = []

    def cycle(self, age=True, **_):
        self.cycles += 1
        return SimpleNamespace(sources=(), targets=(), aging=SimpleNamespace(runs=0, errors=()))

    def due_in(self):
        return 3600.0

    def configure(self, cfg):
        self.configured.append(cfg)


def test_sighup_then_sigterm_wake_a_sleeping_loop_at_once():
    """Run in this (the main) thread, as the daemon does: real signals, real select()."""
    cfg = from_dict({"snapshot": {"interval": "1h"}, "targets": [{"name": "a", "memcg": "/**"}]})
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=0))
    new = from_dict({"snapshot": {"interval": "1h"}, "targets": [{"name": "b", "memcg": "/**"}]})
    engine = _Engine()
    reloads = []

    def reload_config():
        reloads.append(time.monotonic())
        return new

    d = Daemon(cfg, reload_config, engine=engine)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sent = {}

    def sender():
        time.sleep(1.0)
        sent["hup"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(1.0)
        sent["term"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=sender)
    t.start()
    try:
        assert d.run() == 0
        stopped = time.monotonic()
    finally:
        t.join()
    assert len(reloads) == 1 and reloads[0] - sent["hup"] < 2, "SIGHUP did not wake the loop (it sleeps an hour)"
    assert stopped - sent["term"] < 2, "SIGTERM did not wake the loop (it sleeps an hour)"
    assert d.config is new and engine.configured == [new]
    # Everything run() changed is put back (the test process keeps its own handlers).
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(-1) == -1


@pytest.mark.parametrize("burst", [200])
def test_a_burst_of_sighups_is_one_or_more_reloads_and_sigterm_still_stops(burst):
    cfg = from_dict({"snapshot": {"interval": "1h"}})
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=0))
    engine = _Engine()
    reloads = []
    d = Daemon(cfg, lambda: reloads.append(1) or cfg, engine=engine)

    def sender():
        time.sleep(0.5)
        for _ in range(burst):
            os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=sender)
    t.start()
    started = time.monotonic()
    try:
        assert d.run() == 0
    finally:
        t.join()
    assert 1 <= len(reloads) <= burst and time.monotonic() - started < 10


class _Snap:
    def __init__(self, n):
        self.n, self.sources, self.targets = n, (), ()
        self.aging = SimpleNamespace(runs=0, errors=())


def test_the_loop_gives_freed_heap_back_after_each_publish(monkeypatch):
    """memory.trim() runs after the publish, when the snapshot it replaced is already freed (the
    BPF source's columns: heap pages the cycle's own trims could not give back yet)."""
    import weakref
    from mglrud import daemon as mdaemon
    cfg = from_dict({"snapshot": {"interval": "1h"}, "targets": [{"name": "a", "memcg": "/**"}]})
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=0))
    seen = []  # per trim: (the snapshot published, whether the one before it is still alive)
    refs = []

    class Engine(_Engine):
        def cycle(self, age=True, **_):
            self.cycles += 1
            if self.cycles == 4:
                d.stop.set()
            snap = _Snap(self.cycles)
            refs.append(weakref.ref(snap))
            return snap

        def due_in(self):
            return 0.0  # a cycle at every turn of the loop

    def trim():
        current = d.published.current
        seen.append((current.n if current else None, len(refs) > 1 and refs[-2]() is not None))
        return True

    monkeypatch.setattr(mdaemon.memory, "trim", trim)
    d = Daemon(cfg, lambda: cfg, engine=Engine())
    assert d.run() == 0
    published = [n for n, _ in seen if n is not None and n > 1]
    assert published == [2, 3, 4], seen  # once after each publish of the loop
    assert not any(alive for n, alive in seen if n in (2, 3, 4)), seen  # the replaced one already freed
