"""One cycle of the daemon: read what the sources share, age what is due, assemble a Snapshot.

The Engine knows sources only through the Source protocol (sources/base.py) and
the table in sources/__init__.py; which of them run is chosen by
sources/selection.py (`sources:` in the config). Per cycle it:

1. reads what several sources use once: lru_gen's generations (the memcgs there
   are, and what aging writes to) and, when first asked for, the /proc process
   table (targets.ProcTable);
2. resolves targets to memcgs and lets each source prepare (`before_aging`:
   the BPF source loads its target maps, so that the aging about to run is counted);
3. ages the memcgs that are due (mglrud/aging.py), and reads lru_gen again;
4. asks each source for its part and assembles the immutable Snapshot.

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
        self._problems: dict[str, str] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take a new, already validated config; counters and schedule carry over."""
        self.config = config
        self.fs = FS(config.paths)
        self.writer = self._fixed_writer or make_writer(self.fs, config.aging.dry_run)
        self.aging.spacing = spacing([t.interval for t in config.targets], config.snapshot_interval)
        self._choose()

    def _choose(self) -> None:
        """Probe, choose (sources/selection.py), and start, reconfigure or stop sources to match."""
        table = sources.TABLE
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
                    self.sources[e.name] = e.make(self.config, self.fs, self.clock, self.wall)
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
        cfg = self.config
        if selection.reprobe(cfg.sources, self.choice):
            self._choose()  # debugfs may have been mounted since: lru_gen then takes over
        procs = ProcTable(self.fs, cfg.targets)
        lruvecs, status = self._read_lru_gen(count_errors=age)
        resolutions = resolve(cfg.targets, lruvecs, self.fs, procs) if lruvecs else ()
        owner: dict[str, Target] = {}
        for r in resolutions:
            for path in r.memcgs:
                owner.setdefault(path, r.target)
            self._note(f"target {r.target.name}", r.problem)
        self.aging.schedule(owner)

        inputs = Inputs(cfg, self.fs, procs, lruvecs, memcg_index(lruvecs), owner, age, age_all)
        for s in self.sources.values():
            s.before_aging(inputs)
        if age and lruvecs:
            due = self.aging.due(owner, age_all)
            if due:
                self.aging.age(due, lruvecs, owner, resolutions, self.writer, lambda: lru_gen.read(self.fs))
                try:
                    lruvecs = lru_gen.read(self.fs)
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
        return Snapshot(
            taken_at=self.wall(),
            page_size=self.page_size,
            cold_thresholds=cfg.metrics.cold_thresholds,
            idle_age_buckets=cfg.metrics.buckets,
            targets=self._target_states(resolutions),
            sources=tuple(statuses),
            aging=self.aging.stats(),
            **data,
        )

    # ------------------------------------------------------------ helpers

    def _read_lru_gen(self, count_errors: bool) -> tuple[tuple[GenHistogram, ...], SourceStatus]:
        if lru_gen.NAME not in self.choice.active:
            return (), SourceStatus(lru_gen.NAME, False, self.choice.reason(lru_gen.NAME))
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
        """Log a problem when it appears or changes, not every cycle."""
        if self._problems.get(what, "") != problem:
            if problem:
                log.warning("%s: %s", what, problem)
            elif what in self._problems:
                log.info("%s: ok again", what)
            self._problems[what] = problem
