"""One cycle of the daemon: read what the sources share, age what is due, assemble a Snapshot.

The Engine knows sources only through the Source protocol (sources/base.py) and
the table in sources/__init__.py; which of them run is chosen by
sources/selection.py (`sources:` in the config). Per cycle it:

1. reads what several sources use once: lru_gen's generations (the memcgs there
   are, and what aging writes to) and, when first asked for, the /proc process
   table (targets.ProcTable);
2. resolves targets to memcgs and lets each source prepare (`before_aging`:
   the BPF source loads its target maps, so that the aging about to run is counted);
3. ages the memcgs that are due (mglrud/aging.py), and reads lru_gen again, parsing only
   the aged memcgs' sections (and any new memcg): the others keep the first read's
   generations, from just before the aging writes (lru_gen.reparse());
4. asks each source for its part and assembles the immutable Snapshot (lru_gen's part
   leaves out what the cardinality controls say: sources/lru_gen.py select()).

Used by the daemon's loop, by `mglrud snapshot` (once) and by the heatmap's own
session. The Engine and its sources keep the only mutable state: the aging
schedule, the counters, the sources' own intervals and counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

from mglrud import sources
from mglrud.aging import Aging, spacing
from mglrud.config import Config, Target
from mglrud.fs import FS, Writer, make_writer
from mglrud.memory import gc_paused
from mglrud.model import Snapshot, SourceStatus, TargetState
from mglrud.model.lru_gen import GenHistogram
from mglrud.sources import lru_gen, selection
from mglrud.sources.base import Inputs, Source
from mglrud.targets import ProcTable, Resolution, memcg_index, resolve

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: Config, writer: Writer | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.clock, self.wall = clock, wall
        self._fixed_writer = writer
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.aging = Aging(clock, wall)
        self.sources: dict[str, Source] = {}  # the chosen ones, in table order
        self.choice: selection.Choice | None = None
        self.notes = Notes(clock)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take a new, already validated config; counters and schedule carry over."""
        self.config = config
        self.fs = FS(config.paths)
        self.writer = self._fixed_writer or make_writer(self.fs, config.aging.dry_run)
        self.aging.spacing = spacing([t.interval for t in config.targets], config.snapshot_interval)
        if config.lru_gen.enable and not config.aging.dry_run:
            done = lru_gen.switch_on(self.fs)
            if done:
                log.warning("%s", done)
        self._choose()

    def _choose(self) -> None:
        """Probe, choose (sources/selection.py), and start, reconfigure or stop sources to match."""
        table = sources.TABLE
        starting = self.choice is None  # the Engine's first configure, before the daemon's loop
        self.probes = selection.probe_all(self.fs, table)
        choice = selection.choose(self.config.sources, self.probes, table)
        if self.choice is None or choice.active != self.choice.active:
            log.info("sources: %s", "; ".join(f"{name}: {why}" for name, why in choice.why))
        self.choice = choice
        for name in [n for n in self.sources if n not in choice.active]:
            self.sources.pop(name).close()
        for e in table:
            if e.name in choice.active:
                if e.name not in self.sources:
                    src = self.sources[e.name] = e.make(self.config, self.fs, self.clock, self.wall)
                    if not starting and hasattr(src, "in_loop"):
                        src.in_loop = True  # made by a reload: start off the loop (sources/base.py)
                self.sources[e.name].configure(self.config, self.probes[e.name], choice.reason(e.name))
        self.sources = {e.name: self.sources[e.name] for e in table if e.name in self.sources}

    def due_in(self) -> float:
        """Seconds until the next memcg is due for aging, or a source for a read (inf: nothing scheduled)."""
        return min([self.aging.due_in()] + [s.due_in() for s in self.sources.values()])

    def reschedule(self, within: float) -> None:
        """Everything scheduled later than `within` seconds from now becomes due by then
        (the heatmap's own session after a shorter aging interval)."""
        self.aging.reschedule(within)
        for s in self.sources.values():
            s.reschedule(within)

    def close(self) -> None:
        for s in self.sources.values():
            s.close()

    # ------------------------------------------------------------ the cycle

    def cycle(self, age: bool = True, age_all: bool = False) -> Snapshot:
        # A cycle allocates tens of thousands of objects at thousands of memcgs and makes no
        # reference cycles: the collector, run dozens of times over everything the daemon holds,
        # would free nothing (memory.gc_paused()); it runs after.
        with gc_paused(settle=True):
            return self._cycle(age, age_all)

    def _cycle(self, age: bool, age_all: bool) -> Snapshot:
        cfg = self.config
        if selection.reprobe(cfg.sources, self.choice):
            self._choose()  # debugfs may have been mounted since: lru_gen then takes over
        procs = ProcTable(self.fs, cfg.targets)
        lruvecs, status = self._read_lru_gen(count_errors=age)
        index = memcg_index(lruvecs)  # once per read: resolve, the sources and aging share it
        resolutions = resolve(cfg.targets, lruvecs, self.fs, procs, index) if lruvecs else ()
        owner: dict[str, Target] = {}
        for r in resolutions:
            for path in r.memcgs:
                owner.setdefault(path, r.target)
            self._note(f"target {r.target.name}", r.problem)
        self.aging.schedule(owner)

        inputs = Inputs(cfg, self.fs, procs, lruvecs, index, owner, age, age_all)
        for s in self.sources.values():
            s.before_aging(inputs)
        if age and lruvecs:
            due = self.aging.due(owner, age_all)
            if due:
                self.aging.age(due, lruvecs, owner, resolutions, self.writer, lambda: lru_gen.read(self.fs), index)
                try:
                    # only the aged memcgs' sections are parsed again (lru_gen.reparse())
                    lruvecs = lru_gen.read(self.fs, lruvecs, set(due))
                except lru_gen.Unavailable as e:
                    lruvecs, status = (), SourceStatus(lru_gen.NAME, False, str(e))
                inputs = dataclasses.replace(inputs, lruvecs=lruvecs, index=memcg_index(lruvecs))

        # lru_gen's status comes first: it is what aging (and so every MGLRU source) stands on
        statuses, data = [status], {}
        for s in self.sources.values():
            part = s.part(inputs)
            statuses += part.statuses
            data.update(part.data)
            for st in part.statuses:
                self._note(f"source {st.name}", st.reason)
            for what, problem in part.notes:
                self._note(what, problem)
        self.notes.flush()
        return Snapshot(
            taken_at=self.wall(),
            page_size=self.page_size,
            cold_thresholds=cfg.metrics.cold_thresholds,
            idle_age_buckets=cfg.metrics.buckets,
            disabled_families=cfg.metrics.disable,
            targets=self._target_states(resolutions),
            sources=tuple(statuses),
            aging=self.aging.stats(),
            **data,
        )

    # ------------------------------------------------------------ helpers

    def _read_lru_gen(self, count_errors: bool) -> tuple[tuple[GenHistogram, ...], SourceStatus]:
        if lru_gen.NAME not in self.choice.active:
            return (), SourceStatus(lru_gen.NAME, False, self.choice.reason(lru_gen.NAME), chosen=False)
        try:
            return lru_gen.read(self.fs), SourceStatus(lru_gen.NAME, True)
        except lru_gen.Unavailable as e:
            if count_errors:
                self.aging.count_error(e.reason)
            self._note("source lru_gen", str(e))
            return (), SourceStatus(lru_gen.NAME, False, str(e))

    def _target_states(self, resolutions: tuple[Resolution, ...]) -> tuple[TargetState, ...]:
        by_name = {r.target.name: r for r in resolutions}
        out = []
        for t in self.config.targets:
            r = by_name.get(t.name)
            out.append(TargetState(
                name=t.name, kind=t.kind, selector=str(t.value),
                memcgs=r.memcgs if r else (),
                problem=r.problem if r else "not resolved: source lru_gen is down",
                last_success=self.aging.last_success.get(t.name)))
        return tuple(out)

    def _note(self, what: str, problem: str) -> None:
        self.notes.note(what, problem)


class Notes:
    """Logs a problem when it appears, changes or goes away -- within a budget.

    Targets whose processes come and go flip between "no running process" and "ok
    again" every cycle; logged one line per flip, 200 of them wrote 1,935 lines in
    95 s. So per WINDOW seconds at most BUDGET change lines are written, and at most
    PER_KEY of them for any one key (a flapping key cannot use up the others' budget);
    changes beyond that are counted, and once the window is over one summary line
    names the keys, how often each changed and what it says now. The current state of
    every target and source is in /snapshot.json and the metrics whatever the log says.
    """

    WINDOW = 300.0
    BUDGET = 20
    PER_KEY = 4
    NAMED = 5  # keys named in the summary line; the rest are counted

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.problems: dict[str, str] = {}
        self._start = clock()
        self._logged = 0
        self._per_key: dict[str, int] = {}
        self._held: dict[str, int] = {}  # key -> changes not logged in this window

    def note(self, what: str, problem: str) -> None:
        self.flush()
        if self.problems.get(what, "") == problem:
            return
        if what not in self.problems and not problem:
            self.problems[what] = problem  # first seen, and fine: nothing to say
            return
        self.problems[what] = problem
        if self._logged >= self.BUDGET or self._per_key.get(what, 0) >= self.PER_KEY:
            self._held[what] = self._held.get(what, 0) + 1
            return
        self._logged += 1
        self._per_key[what] = self._per_key.get(what, 0) + 1
        if problem:
            log.warning("%s: %s", what, problem)
        else:
            log.info("%s: ok again", what)

    def flush(self) -> None:
        """Once a window is over: the summary of what was held back, and a new budget."""
        now = self.clock()
        if now - self._start < self.WINDOW:
            return
        if self._held:
            keys = sorted(self._held, key=lambda k: (-self._held[k], k))
            named = "; ".join(f"{k}: {self._held[k]}x, now {self.problems[k] or 'ok'}" for k in keys[:self.NAMED])
            more = f"; and {len(keys) - self.NAMED} more" if len(keys) > self.NAMED else ""
            log.warning("%d state changes of %d targets/sources not logged in the last %ds (flapping; "
                        "/snapshot.json has the current state): %s%s", sum(self._held.values()), len(keys),
                        round(now - self._start), named, more)
        self._start, self._logged, self._per_key, self._held = now, 0, {}, {}
