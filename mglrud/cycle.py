"""One cycle of the daemon: read lru_gen, resolve targets, age what is due, build a Snapshot.

Which sources run is chosen by sources/selection.py (`sources:` in the config):
on a kernel without MGLRU, `auto` runs the /proc source instead of lru_gen, and
keeps probing for lru_gen each cycle so that it takes over once it can be read.

Used by the daemon's loop and, once, by `mglrud snapshot`. The Engine keeps
the only mutable state: the aging schedule and the cumulative aging counters
that become immutable AgingStats in each Snapshot.

Many memcgs are spread over the aging interval rather than aged together: each
memcg gets a fixed phase inside its interval from a hash of its path, so the
page-table walks (the cost of aging) are spread evenly and stay in the same
place from cycle to cycle.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections import Counter
from typing import Callable

from mglrud.config import Config, Target
from mglrud.fs import FS, Writer, make_writer
from mglrud.model import AgingStats, GenHistogram, Snapshot, SourceStatus, TargetState
from mglrud.sources import bpf_hotness, lru_gen, procfs, selection
from mglrud.targets import memcg_index, resolve

log = logging.getLogger(__name__)

# Aging a memcg costs one page-table walk over its processes: milliseconds to seconds.
DURATION_EDGES = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Memcgs due within this many seconds are aged in the same wake-up.
SLACK = 0.25


def phase(path: str, interval: float) -> float:
    return zlib.crc32(path.encode()) / 2**32 * interval


class Engine:
    def __init__(self, config: Config, writer: Writer | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.clock, self.wall = clock, wall
        self._fixed_writer = writer
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.runs = 0
        self.errors: Counter[str] = Counter({r: 0 for r in lru_gen.REASONS})
        self.duration_counts = [0] * (len(DURATION_EDGES) + 1)
        self.duration_sum = 0.0
        self.last_success: dict[str, float] = {}
        self.next_due: dict[str, float] = {}
        self._problems: dict[str, str] = {}
        self.procfs: procfs.ProcfsSource | None = None
        self.choice: selection.Choice | None = None
        self.bpf: bpf_hotness.BpfHotnessSource | None = None
        self._bpf_retired: bpf_hotness.BpfHotnessSource | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take a new, already validated config; counters and schedule carry over."""
        self.config = config
        self.fs = FS(config.paths)
        self.writer = self._fixed_writer or make_writer(self.fs, config.aging.dry_run)
        self._choose()

    def _choose(self) -> None:
        """Pick the sources (sources/selection.py) and set up the /proc source if it is one."""
        self.probes = selection.probe_all(self.fs)
        choice = selection.choose(self.config.sources, self.probes)
        if self.choice is None or choice.active != self.choice.active:
            log.info("sources: %s", "; ".join(f"{name}: {why}" for name, why in choice.why))
        self.choice = choice
        self._choose_bpf()
        p = self.config.procfs
        if "procfs" not in choice.active:
            self.procfs = None
        elif self.procfs is None:
            self.procfs = procfs.ProcfsSource(self.fs, max_processes=p.max_processes, top_mappings=p.top_mappings,
                                              clear_refs=p.clear_refs, clock=self.clock, wall=self.wall)
        else:  # a reload: keep its intervals and idle times
            self.procfs.fs = self.fs
            self.procfs.reconfigure(max_processes=p.max_processes, top_mappings=p.top_mappings,
                                    clear_refs=p.clear_refs)

    def due_in(self) -> float:
        """Seconds until the next memcg (or /proc target) is due (inf when none is scheduled)."""
        lru = min(self.next_due.values(), default=float("inf")) - self.clock()
        return min(lru, self.procfs.due_in()) if self.procfs else lru

    # ------------------------------------------------------------ the cycle

    def cycle(self, age: bool = True, age_all: bool = False) -> Snapshot:
        cfg = self.config
        if cfg.sources == selection.AUTO and "lru_gen" not in self.choice.active:
            self._choose()  # debugfs may have been mounted since: lru_gen then takes over
        if "lru_gen" not in self.choice.active:
            lruvecs = ()
            status = SourceStatus(lru_gen.NAME, False, self.choice.reason("lru_gen"))
        else:
            try:
                lruvecs = lru_gen.read(self.fs)
                status = SourceStatus(lru_gen.NAME, True)
            except lru_gen.Unavailable as e:
                lruvecs = ()
                status = SourceStatus(lru_gen.NAME, False, str(e))
                if age:
                    self.errors[e.reason] += 1
                self._note("source lru_gen", str(e))
        resolutions = resolve(cfg.targets, lruvecs, self.fs) if lruvecs else ()
        owner: dict[str, Target] = {}
        for r in resolutions:
            for path in r.memcgs:
                owner.setdefault(path, r.target)
            self._note(f"target {r.target.name}", r.problem)
        self._reschedule(owner)

        if self.bpf is not None:
            self.bpf.prepare(cfg.targets, memcg_index(lruvecs))  # before aging, so that it is counted
        if age and lruvecs:
            now = self.clock()
            due = [p for p in owner if age_all or self.next_due[p] <= now + SLACK]
            if due:
                self._age(due, lruvecs, owner, resolutions)
                try:
                    lruvecs = lru_gen.read(self.fs)
                except lru_gen.Unavailable as e:
                    lruvecs, status = (), SourceStatus(lru_gen.NAME, False, str(e))

        index = memcg_index(lruvecs)
        # .get: a memcg that went offline since the first read is no longer in the index.
        shown = tuple(h for h in lruvecs if h.memcg_path in owner and index.get(h.memcg_path) == h.memcg_id)
        procfs_data, more = self._read_procfs(age, age_all)
        hotness, more = self._read_bpf(index, more)
        return Snapshot(
            taken_at=self.wall(),
            page_size=self.page_size,
            cold_thresholds=cfg.metrics.cold_thresholds,
            idle_age_buckets=cfg.metrics.buckets,
            lruvecs=shown,
            targets=self._target_states(resolutions, status),
            sources=(status,) + more,
            aging=self._stats(),
            procfs=procfs_data,
            hotness=hotness,
        )

    # ------------------------------------------------------------ helpers

    def _read_procfs(self, age: bool, age_all: bool):
        """The /proc source's data and the statuses of the sources besides lru_gen that were chosen or named.

        Not aging (the daemon's first cycle, `snapshot --no-age`) reads without clear_refs.
        """
        statuses = []
        for name in ("procfs",):  # bpf: _read_bpf
            if name in self.choice.active and not (name == "procfs" and self.probes[name].usable):
                statuses.append(SourceStatus(name, False, self.choice.reason(name)))
                self._note(f"source {name}", self.choice.reason(name))
        if self.procfs is None:
            return None, tuple(statuses)
        data = self.procfs.read(self.config.targets, force=age_all, clear=age)
        for t in data.targets:
            self._note(f"target {t.name} (procfs)", t.problem)
        if self.probes["procfs"].usable:
            statuses.append(SourceStatus(procfs.NAME, True))
        return data, tuple(statuses)

    def _choose_bpf(self) -> None:
        """Start the BPF source when chosen (it compiles and attaches once, ~1 s; ~15 s under
        TCG), restart it when a reload changes bpf:, stop it when no longer chosen."""
        want = "bpf" in self.choice.active
        if self.bpf is not None and (not want or self.bpf.cfg != self.config.bpf):
            self.bpf.close()
            self._bpf_retired, self.bpf = self.bpf, None  # its counters go on in the next one
        if want and self.bpf is None:
            self.bpf = bpf_hotness.BpfHotnessSource(self.config.bpf, self.fs)
            if self._bpf_retired is not None:
                self.bpf.carry_over(self._bpf_retired)
                self._bpf_retired = None
            self.bpf.start()
        elif self.bpf is not None:
            self.bpf.fs = self.fs

    def _read_bpf(self, index: dict[str, int], statuses: tuple[SourceStatus, ...]):
        """The BPF source's data and statuses with its own added (when it is chosen or named)."""
        if self.bpf is None:
            return None, statuses
        data = self.bpf.cycle(self.config.targets, index)
        status = self.bpf.status()
        self._note("source bpf", status.reason)
        return data, statuses + (status,)

    def _reschedule(self, owner: dict[str, Target]) -> None:
        now = self.clock()
        for path in list(self.next_due):
            if path not in owner:
                del self.next_due[path]
        for path, t in owner.items():
            if path not in self.next_due:
                self.next_due[path] = now + phase(path, t.interval)

    def _age(self, due: list[str], lruvecs: tuple[GenHistogram, ...], owner: dict[str, Target],
             resolutions) -> None:
        index = memcg_index(lruvecs)

        def reread() -> tuple[GenHistogram, ...]:
            return lru_gen.read(self.fs)

        for path in due:
            t = owner[path]
            ok = False
            for h in lruvecs:
                if h.memcg_path != path or h.memcg_id != index[path]:
                    continue
                res = lru_gen.age(h, self.writer, reread, t.can_swap, t.force_scan, self.clock)
                self._observe(res)
                ok = ok or res.ok
            if ok:
                stamp = self.wall()
                for r in resolutions:
                    if path in r.memcgs:
                        self.last_success[r.target.name] = stamp
            now = self.clock()
            nxt = self.next_due[path] + t.interval
            self.next_due[path] = nxt if nxt > now else now + t.interval

    def _observe(self, res: lru_gen.AgingResult) -> None:
        self.runs += 1
        if not res.ok:
            self.errors[res.reason] += 1
            log.warning("aging %s node %d failed: %s (%s)", res.memcg_path, res.node, res.reason,
                        "; ".join(res.commands))
        else:
            log.debug("aged %s node %d in %.3fs: %s", res.memcg_path, res.node, res.duration, res.commands[-1])
        self.duration_sum += res.duration
        for i, edge in enumerate(DURATION_EDGES):
            if res.duration <= edge:
                self.duration_counts[i] += 1
        self.duration_counts[-1] += 1

    def _stats(self) -> AgingStats:
        return AgingStats(
            runs=self.runs,
            errors=tuple(sorted(self.errors.items())),
            duration_edges=DURATION_EDGES,
            duration_counts=tuple(self.duration_counts),
            duration_sum=self.duration_sum,
        )

    def _target_states(self, resolutions, status: SourceStatus) -> tuple[TargetState, ...]:
        by_name = {r.target.name: r for r in resolutions}
        out = []
        for t in self.config.targets:
            r = by_name.get(t.name)
            out.append(TargetState(
                name=t.name, kind=t.kind, selector=str(t.value),
                memcgs=r.memcgs if r else (),
                problem=r.problem if r else "not resolved: source lru_gen is down",
                last_success=self.last_success.get(t.name)))
        return tuple(out)

    def _note(self, what: str, problem: str) -> None:
        """Log a problem when it appears or changes, not every cycle."""
        if self._problems.get(what, "") != problem:
            if problem:
                log.warning("%s: %s", what, problem)
            elif what in self._problems:
                log.info("%s: ok again", what)
            self._problems[what] = problem
