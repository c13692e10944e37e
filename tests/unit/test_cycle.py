"""cycle.py: which memcgs are aged when, with what command, and what the Snapshot holds."""

import errno

from mglrud.config import loads
from mglrud.aging import SLACK, phase
from mglrud.cycle import Engine
from mglrud.fs import RecordingWriter
from synth import lru_gen_text


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _engine(tmp_path, yaml, memcgs, fail=None):
    (tmp_path / "debugfs").mkdir(exist_ok=True)
    (tmp_path / "debugfs" / "lru_gen").write_text(lru_gen_text(memcgs))
    cfg = loads(yaml + f"\npaths: {{debugfs: {tmp_path}/debugfs, procfs: {tmp_path}/proc}}\n")
    clock = Clock()
    writer = RecordingWriter(fail)
    return Engine(cfg, writer=writer, clock=clock, wall=lambda: 1.7e9 + clock.t), writer, clock


MEMCGS = [(1, "/", [(0, [(5, 9000, 10, 20), (6, 100, 1, 2)])]),
          (3, "/a", [(0, [(7, 4000, 100, 0), (8, 10, 5, 0)]), (1, [(2, 4000, 0, 0)])]),
          (4, "/b", [(0, [(9, 4000, 7, 7)]), (1, [(4, 4000, 0, 0)])])]


def test_snapshot_only_reads_when_not_aging(tmp_path):
    eng, w, _ = _engine(tmp_path, "targets: [{memcg: /a}]", MEMCGS)
    snap = eng.cycle(age=False)
    assert w.commands == []
    assert [(h.memcg_path, h.node) for h in snap.lruvecs] == [("/a", 0), ("/a", 1)]
    assert snap.sources[0].up and snap.targets[0].memcgs == ("/a",)


def test_age_all_writes_every_node_once(tmp_path):
    eng, w, _ = _engine(tmp_path, "aging: {can_swap: false}\ntargets: [{memcg: /a}, {memcg: /b, force_scan: false}]",
                        MEMCGS)
    snap = eng.cycle(age_all=True)
    assert w.commands == ["+ 3 0 8 0 1", "+ 3 1 2 0 1", "+ 4 0 9 0 0", "+ 4 1 4 0 0"]
    assert snap.aging.runs == 4 and dict(snap.aging.errors)["einval"] == 0
    assert all(t.last_success == 1.7e9 + 1000.0 for t in snap.targets)


def test_memcgs_are_spread_over_the_interval(tmp_path):
    many = [(10 + i, f"/m{i}", [(0, [(3, 100, 1, 1)])]) for i in range(40)]
    eng, w, clock = _engine(tmp_path, "aging: {interval: 1m}\ntargets: [{memcg: '/m*'}]", many)
    eng.cycle(age=False)
    phases = sorted(phase(f"/m{i}", 60.0) for i in range(40))
    assert phases[0] >= 0 and phases[-1] < 60
    assert len({int(p // 15) for p in phases}) == 4, "every quarter of the interval has some"
    # Walk through one interval in 1 s steps: each memcg is aged exactly once,
    # and never more than a handful in the same second.
    per_step = []
    for _ in range(60):
        before = len(w.commands)
        eng.cycle()
        per_step.append(len(w.commands) - before)
        clock.t += 1.0
    assert sorted(w.commands) == sorted(f"+ {10 + i} 0 3 1 1" for i in range(40))
    assert max(per_step) < 40


def test_many_memcgs_are_aged_in_few_wakeups_never_early(tmp_path):
    # 600 phases spread over a minute: the loop (as daemon.py runs it: wake at due_in() or at the
    # next publish, 10 s) ages them in about WAKEUPS groups a minute, not hundreds of wake-ups;
    # each memcg is aged once per interval, never before its phase, at most 10 s after it.
    many = [(10 + i, f"/m{i}", [(0, [(3, 100, 1, 1)]), (1, [(3, 100, 1, 1)])]) for i in range(600)]
    eng, w, clock = _engine(tmp_path, "aging: {interval: 1m}\nsnapshot: {interval: 10s}\n"
                                      "targets: [{memcg: '/m*'}]", many)
    start = clock.t
    eng.cycle(age=False)
    aged: dict[str, list[float]] = {}
    wakeups, publish = 0, clock.t + 10
    while clock.t < start + 180:
        clock.t = max(clock.t + 0.05, min(clock.t + eng.due_in(), publish))
        before = len(w.commands)
        eng.cycle()
        for c in w.commands[before:]:
            aged.setdefault(c.split()[1], []).append(clock.t)
        wakeups += 1
        publish = clock.t + 10
    assert wakeups <= 3 * 12, f"{wakeups} wake-ups in 3 minutes"
    assert len(aged) == 600
    for i in range(600):
        times = aged[str(10 + i)][::2]  # two nodes, aged in the same wake-up
        assert aged[str(10 + i)][1::2] == times
        due = [start + phase(f"/m{i}", 60.0) + 60 * k for k in range(len(times))]
        # the k-th aging follows the k-th due time (SLACK early at most): once per interval
        assert all(-SLACK <= t - d <= 10 + SLACK for t, d in zip(times, due)), (i, times, due)
        assert len(times) >= 3


def test_interval_is_kept_per_memcg(tmp_path):
    eng, w, clock = _engine(tmp_path, "targets: [{memcg: /a, interval: 10s}]", MEMCGS)
    eng.cycle(age=False)
    counts = []
    for _ in range(30):
        clock.t += 1.0
        eng.cycle()
        counts.append(len(w.commands))
    assert counts[-1] == 6, "3 agings x 2 nodes in 30 s at a 10 s interval"


def test_first_target_wins_for_a_shared_memcg(tmp_path):
    eng, w, _ = _engine(tmp_path, "targets: [{name: x, memcg: /a, can_swap: false}, {name: y, memcg: '/*'}]", MEMCGS)
    snap = eng.cycle(age_all=True)
    assert [c for c in w.commands if c.startswith("+ 3 ")] == ["+ 3 0 8 0 1", "+ 3 1 2 0 1"]
    assert {t.name: t.last_success is not None for t in snap.targets} == {"x": True, "y": True}


def test_errors_are_counted_and_never_raised(tmp_path):
    eng, w, _ = _engine(tmp_path, "targets: [{memcg: /a}]", MEMCGS,
                        fail={"+ 3 0 8 1 1": [errno.ERANGE], "+ 3 1 2 1 1": [errno.EPERM]})
    snap = eng.cycle(age_all=True)
    errors = dict(snap.aging.errors)
    assert (errors["erange"], errors["eperm"], snap.aging.runs) == (1, 1, 2)
    assert snap.targets[0].last_success is None


def test_missing_lru_gen_is_a_down_source(tmp_path):
    eng, w, _ = _engine(tmp_path, "targets: [{memcg: /a}]", MEMCGS)
    (tmp_path / "debugfs" / "lru_gen").unlink()
    snap = eng.cycle()
    assert not snap.sources[0].up and "mount -t debugfs" in snap.sources[0].reason
    assert dict(snap.aging.errors)["no_debugfs"] == 1
    assert snap.lruvecs == () and snap.targets[0].problem


def test_dying_duplicate_is_neither_aged_nor_exported(tmp_path):
    memcgs = [(1, "/", [(0, [(5, 10, 1, 1)])]), (6, "/svc", [(0, [(3, 10, 9, 9)])]),
              (8, "/svc", [(0, [(4, 10, 1, 1)])])]
    eng, w, _ = _engine(tmp_path, "targets: [{memcg: /svc}]", memcgs)
    snap = eng.cycle(age_all=True)
    assert w.commands == ["+ 8 0 4 1 1"]
    assert [h.memcg_id for h in snap.lruvecs] == [8]


def test_duration_histogram_counts_every_run(tmp_path):
    eng, w, _ = _engine(tmp_path, "targets: [{memcg: '/*'}]", MEMCGS)
    a = eng.cycle(age_all=True).aging
    assert a.duration_counts[-1] == a.runs == 4
    assert list(a.duration_counts) == sorted(a.duration_counts), "cumulative"


def test_churning_targets_do_not_flood_the_log(tmp_path, caplog):
    """Issue 18 item 3: 200 targets that come and go every cycle wrote a line per flip
    (1,935 lines in 95 s). Now: a budget per window and one summary line for the rest."""
    import logging

    caplog.set_level(logging.INFO, logger="mglrud.cycle")
    present = [(1, "/", [(0, [(5, 9000, 10, 20)])])] + [(10 + i, f"/m{i}", [(0, [(3, 100, 1, 1)])])
                                                        for i in range(200)]
    absent = present[:1]
    targets = ", ".join(f"{{memcg: /m{i}}}" for i in range(200))
    eng, _, clock = _engine(tmp_path, f"targets: [{targets}]", present)
    lines_at = {}
    for n in range(62):  # one cycle every 10 s, a little over two windows
        (tmp_path / "debugfs" / "lru_gen").write_text(lru_gen_text(absent if n % 2 else present))
        eng.cycle(age=False)
        clock.t += 10
        lines_at[n] = len(caplog.records)
    flips = [r for r in caplog.records if r.getMessage().startswith("target memcg:/m")]
    summaries = [r.getMessage() for r in caplog.records if "not logged in the last" in r.getMessage()]
    assert lines_at[9] <= 21  # the 95 s: at most the budget of 20 (+ the sources line)
    from mglrud.cycle import Notes
    assert len(flips) <= 3 * Notes.BUDGET and len(summaries) == 2
    # 200 targets x 29 flips in the first window (cycle 0 is the first look), less the ones logged
    held = [int(s.split(" state changes")[0]) for s in summaries]
    assert held == [200 * 29 - Notes.BUDGET, 200 * 30 - Notes.BUDGET]
    assert "of 200 targets/sources" in summaries[0] and "and 195 more" in summaries[0]
    # What the targets say now is still exact in the snapshot, whatever the log held back.
    snap = eng.cycle(age=False)
    assert all(t.problem == f"no memcg in lru_gen matches {t.selector}" for t in snap.targets)


def test_a_problem_and_its_recovery_are_logged_when_not_flapping(caplog):
    import logging
    from mglrud.cycle import Notes

    caplog.set_level(logging.INFO, logger="mglrud.cycle")
    clock = Clock()
    notes = Notes(clock)
    notes.note("target a", "")  # first seen fine: nothing to say
    notes.note("target a", "no running process with comm a")
    notes.note("target a", "no running process with comm a")  # unchanged: said once
    notes.note("target a", "")
    assert [r.getMessage() for r in caplog.records] == ["target a: no running process with comm a",
                                                        "target a: ok again"]


def test_duration_histogram_buckets_are_le_edges_cumulative():
    from mglrud.aging import DURATION_EDGES, Aging
    from mglrud.sources.lru_gen import AgingResult
    a = Aging(lambda: 0.0, lambda: 0.0)
    durations = [0.0, 0.0005, 0.001, 0.0011, 0.3, 10.0, 20.0]
    for d in durations:
        a._observe(AgingResult("/m", 0, "", d, ("+ 1 0 5 1 0",)))
    s = a.stats()
    # the exposition's rule: each edge counts the runs that took at most that long; +Inf all of them
    assert list(s.duration_counts) == [sum(d <= e for d in durations) for e in DURATION_EDGES] + [len(durations)]
    assert s.duration_counts[:3] == (3, 4, 4) and s.duration_counts[-2:] == (6, 7)
    assert s.runs == 7 and s.duration_sum == sum(durations)


def test_a_cycle_leaves_its_read_in_the_oldest_generation(tmp_path):
    """Engine.cycle() settles its burst (memory.gc_paused(settle=True)): the snapshot's lruvecs
    are not in the young generations, which the next collections would traverse for nothing."""
    import gc
    eng, _, _ = _engine(tmp_path, "targets: [{memcg: /a}, {memcg: /b}]", MEMCGS)
    snap = eng.cycle(age_all=True)
    young = {id(o) for g in (0, 1) for o in gc.get_objects(g)}
    assert snap.lruvecs and not any(id(h) in young for h in snap.lruvecs)
    assert all(id(h) in {id(o) for o in gc.get_objects(2)} for h in snap.lruvecs)
