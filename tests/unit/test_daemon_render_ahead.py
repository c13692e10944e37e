"""The daemon's loop renders a snapshot ahead only for scrapes expected before ITS next publish:
the next cycle, at snapshot.interval or at the next aging wake-up if that comes first (every
cycle publishes). It said snapshot.interval alone, so a snapshot replaced at a wake-up before its
scrape was rendered for nothing (issue 19: 4.5-5 renders a minute for 4 scrapes at 3,000 memcgs)."""

import dataclasses
import os
import signal
import threading
import time
from types import SimpleNamespace

from mglrud import exposition
from mglrud.config import from_dict
from mglrud.daemon import Daemon


class _Engine:
    """An aging wake-up every 0.3 s: far sooner than the snapshot interval (1 h)."""

    def __init__(self):
        self.cycles = 0
        self.due = time.monotonic() + 0.3

    def cycle(self, age=True, **_):
        self.cycles += 1
        self.due = time.monotonic() + 0.3
        return SimpleNamespace(sources=(), targets=(), aging=SimpleNamespace(runs=0, errors=()))

    def due_in(self):
        return self.due - time.monotonic()

    def configure(self, cfg):
        pass


def test_prepare_is_told_the_time_to_the_next_cycle_not_the_snapshot_interval(monkeypatch):
    cfg = from_dict({"snapshot": {"interval": "1h"}})
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=0))
    told = []
    monkeypatch.setattr(exposition.Exposition, "prepare", lambda self, within=None: told.append(within) or 0)
    engine = _Engine()
    d = Daemon(cfg, lambda: cfg, engine=engine)

    def sender():
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=sender)
    t.start()
    try:
        assert d.run() == 0
    finally:
        t.join()
    assert told and engine.cycles >= len(told), (told, engine.cycles)
    assert all(0.0 <= w <= 0.3 for w in told), told  # the wake-up, not the hour
