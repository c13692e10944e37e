"""mglrud/tui/ without a terminal: which mode, the checks behind its one-line errors, the history of
snapshots, and the own session's live aging interval (an Engine on a synthetic lru_gen, recorded writes)."""

import argparse
import os

import pytest

from fixture_snapshots import procfs_snapshot
from mglrud import tui
from mglrud.config import loads
from mglrud.aging import phase
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from synth import lru_gen_text
from test_cycle import MEMCGS, Clock

PROCFS = {"taken_at": 100.0, "targets": [{"name": "wl"}],
          "procfs": procfs_snapshot()}
PID = PROCFS["procfs"]["processes"][0]["pid"]
PID_SELF = os.getpid()  # a process that exists


def args(**kw):
    base = dict(target=None, pid=None, url="http://127.0.0.1:1", own=False, config=None, aging=5.0)
    return argparse.Namespace(**{**base, **kw})


def test_the_daemon_must_have_the_target_or_pid():
    tui.check_daemon_has(PROCFS, "wl", None)
    tui.check_daemon_has(PROCFS, None, PID)
    with pytest.raises(tui.HeatmapError, match="the daemon has no target 'x'; its targets: wl"):
        tui.check_daemon_has(PROCFS, "x", None)
    with pytest.raises(tui.HeatmapError, match="no data for pid 1 .*--own"):
        tui.check_daemon_has(PROCFS, None, 1)


def test_png_path_checks(tmp_path):
    tui.check_writable(str(tmp_path / "a.png"))
    with pytest.raises(tui.HeatmapError, match="is a directory"):
        tui.check_writable(str(tmp_path))
    with pytest.raises(tui.HeatmapError, match="does not exist"):
        tui.check_writable(str(tmp_path / "no" / "a.png"))


def test_no_daemon_means_an_own_session_config_for_just_that_pid_or_target(tmp_path):
    cfg = tui.own_config(args(pid=4242), 3.0)
    [t] = cfg.targets
    assert (t.kind, t.value, t.interval, cfg.aging.interval) == ("pid", 4242, 3.0, 3.0)
    with pytest.raises(tui.HeatmapError, match="no target 'db' in the built-in defaults: pass the daemon's --config"):
        tui.own_config(args(target="db"), 3.0)
    conf = tmp_path / "c.yaml"
    conf.write_text("targets: [{name: db, memcg: /db}, {name: web, comm: nginx}]\n")
    [t] = tui.own_config(args(target="web", config=str(conf)), 2.0).targets
    assert (t.name, t.kind, t.interval) == ("web", "comm", 2.0)
    with pytest.raises(tui.HeatmapError, match="config: "):
        tui.own_config(args(pid=1, config=str(tmp_path / "missing.yaml")), 2.0)


def test_open_feed_falls_back_to_an_own_session_and_says_why(monkeypatch):
    made = []
    monkeypatch.setattr(tui.feeds, "OwnSession", lambda cfg, why: made.append((cfg, why)) or "session")
    assert tui.open_feed(args(pid=PID_SELF)) == ("session", None)
    assert made[0][1] == "no daemon at http://127.0.0.1:1"
    feed, first = tui.open_feed(args(pid=PID_SELF, own=True))
    assert feed == "session" and made[1][1] == "--own"
    monkeypatch.setattr(tui.DaemonFeed, "poll", lambda self: PROCFS)  # a daemon answers
    feed, first = tui.open_feed(args(target="wl"))
    assert isinstance(feed, tui.DaemonFeed) and first is PROCFS and len(made) == 2
    with pytest.raises(tui.HeatmapError, match="the daemon has no target 'db'"):
        tui.open_feed(args(target="db"))
    with pytest.raises(tui.HeatmapError, match="no process 4194304"):
        tui.open_feed(args(pid=4194304))


def test_history_keeps_one_column_per_published_snapshot():
    h = tui.History(None, PID)
    assert h.add(PROCFS) and not h.add(PROCFS)  # the daemon has not published a new one
    later = {**PROCFS, "taken_at": 101.0}
    assert h.add(later) and h.grid().times == (100.0, 101.0) and h.latest.taken_at == 101.0  # read as a SnapshotDoc


def test_attached_aging_keys_say_why_they_do_nothing():
    msg = tui.DaemonFeed("http://x").set_aging(1.0)
    assert msg.startswith("aging interval unavailable when attached")
    assert tui.DaemonFeed("http://x").aging(PROCFS) == "daemon's (~30s)"


def test_own_session_ages_on_its_schedule_and_a_new_interval_applies_at_once(tmp_path):
    (tmp_path / "debugfs").mkdir()
    (tmp_path / "debugfs" / "lru_gen").write_text(lru_gen_text(MEMCGS))
    cfg = loads(f"aging: {{interval: 60s}}\ntargets: [{{name: a, memcg: /a}}]\n"
                f"paths: {{debugfs: {tmp_path}/debugfs, procfs: {tmp_path}/proc}}\n")
    clock, writer = Clock(), RecordingWriter()
    s = tui.OwnSession(cfg, "--own", engine=Engine(cfg, writer=writer, clock=clock, wall=lambda: 1.7e9 + clock.t))
    first = s.poll()
    assert writer.commands == [] and first.targets[0].memcgs == ("/a",)  # the first cycle only reads
    assert s.engine.due_in() == pytest.approx(phase("/a", 60.0))  # its phase in the 60 s interval
    assert s.set_aging(2.0) == "aging interval now 2s" and s.aging(None) == "2s"
    assert s.engine.due_in() == pytest.approx(min(phase("/a", 60.0), 2.0))
    assert s.engine.config.targets[0].interval == 2.0
    clock.t += 2.0
    s.poll()
    assert writer.commands and all(c.startswith("+ 3 ") for c in writer.commands)  # /a is memcg 3
