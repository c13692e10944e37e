"""Source: per-region access heat from bpf/hotness.bpf.c on mglrud's MGLRU tracepoint.

The tracepoint vmscan:mm_vmscan_lru_gen_young_range comes with mglrud's kernel patch
(kernel-patch/; Documentation/admin-guide/mm/multigen_lru.rst, "Tracing accessed
bits"): the aging walk fires it for every PTE table (THP, look-around window) it
looks at, with the mm and the counts of entries scanned and found young.
The BPF program (loaded by bcc from bpf/hotness.bpf.c, constants passed as -D
flags) counts them in the kernel per (tgid, memcg, region, node, lru); this
module has it compiled and attached once, by a short-lived child process
(mglrud/bpf_loader.py, which keeps bcc and LLVM out of the daemon's memory),
tells it the targets through two maps (target_tgids, target_memcgs), reads its
maps once per cycle with bpf(2) (mglrud/bpfsys.py) and hands the raw
counts to the pure functions of mglrud/model/hotness.py. Residency comes from
/proc/PID/smaps (which mappings hold pages) and /proc/PID/pagemap (which pages,
on which node; Documentation/admin-guide/mm/pagemap.rst).

Map counters are never reset: deltas are computed here. Keys of processes and
memcgs no longer targeted are deleted from the map (their counts are already
folded into the per-target totals), which keeps the map bounded together with
its fixed size; when it is full anyway, the program counts the events it could
not store (mglrud_bpf_dropped_events_total).

When the tracepoint is missing or bcc cannot compile or attach the program,
the source is down with the reason (mglrud_source_up{source="bpf"}, `mglrud
check`, the log) and the other sources carry on. A program that failed to load,
or whose maps could no longer be read (bpf(2) errors: OSError), is started again
after RETRY_FIRST seconds, then after twice as long each time up to RETRY_MAX,
and at once on a reload (SIGHUP); its counters go on from the old program's.

Only a start before the daemon's loop compiles in-line (under systemd's
TimeoutStartSec). Every other one -- a reload that turns the source on or changes
bpf:, a retry -- is a Build: a background thread waits for the loader child (up to bpf_loader.TIMEOUT,
far beyond WatchdogSec), while the loop goes on cycling and pinging the watchdog;
the old program keeps serving until the loop takes the new one (prepare(), each
cycle; due_in() brings the next cycle forward while a build runs).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from collections import Counter
from operator import itemgetter

from mglrud.config import Bpf, Config, Target, memcg_matches
from mglrud.fs import FS
from mglrud.memory import gc_paused, trim
from mglrud.model import SourceStatus
from mglrud.model import hotness as H
from mglrud.sources import bpf_probe
from mglrud.sources.base import Inputs, Part, Probe
from mglrud.sources.bpf_build import Build
from mglrud.sources.bpf_heat import HeatBuilder
from mglrud.sources.bpf_program import (DEFAULT_PROGRAM, EVENT, HARVESTERS, KEY, MAPS, MAP_ERRORS, MAX_MEMCGS, MAX_TGIDS, Program, RANGE_EVENT, STATS, U32, U64, Unavailable, VAL, cflags, pick_event, read_cells, program_path)  # noqa: F401
from mglrud.targets import ProcTable

log = logging.getLogger(__name__)

NAME = "bpf"
# A failed program is started again after 30 s, 1 min, 2 min, ... at most every 30 min: a
# (re)start compiles the program (about a second; 15 s in a TCG guest) inside the loop.
RETRY_FIRST = 30.0
RETRY_MAX = 1800.0
BUILD_POLL = 1.0  # seconds between looks at a running Build (due_in())

# ---------------------------------------------------------------- targets

def isin(col, values):
    """Which rows of a uint64 column hold one of `values` (a set of ints)."""
    import numpy as np

    return np.isin(col, np.fromiter(values, dtype=np.uint64, count=len(values)))


def target_processes(targets: tuple[Target, ...], procs: ProcTable) -> dict[str, tuple[int, ...]]:
    """Process targets -> their tgids now."""
    return {t.name: tuple(p.pid for p in procs.of(t)) for t in targets if t.kind != "memcg"}


def target_memcgs(targets: tuple[Target, ...], index: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Memcg targets -> memcg ids, from lru_gen's path -> id index of this cycle."""
    return {t.name: tuple(sorted({i for p, i in index.items() if memcg_matches(t.pattern, p)}))
            for t in targets if t.kind == "memcg"}


# ---------------------------------------------------------------- the source

class BpfHotnessSource(HeatBuilder):
    def __init__(self, cfg: Bpf, fs: FS, loader=Program, wall=time.time, clock=time.monotonic):
        self.cfg, self.fs, self.loader, self.wall, self.clock = cfg, fs, loader, wall, clock
        self._retry_at: float | None = None  # when a failed program is started again
        self._backoff = RETRY_FIRST
        self._up_since = 0.0
        self.restarts = 0
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.program = None
        self._started = False  # start() tried (configure() starts it once)
        self.reason = "not started"
        # per-cell state as columns (model/heat_columns.py: numpy, imported on the first read,
        # as the probe makes sure it is there), the pass-tagged finds included; None: no cell yet
        self.cols = None
        self.accessed: dict[str, Counter] = {}  # target -> (node, lru) -> bytes, cumulative
        self.stats = (0, 0, 0)
        self.stats_base = (0, 0, 0)  # counts of the programs before this one (see carry_over)
        self.harvested = tuple((n, 0) for n in HARVESTERS)  # this program's, latest read
        self.harvest_base = (0,) * len(HARVESTERS)
        self._procs: dict | None = None
        self._memcgs: dict = {}
        # target name -> (tgids, memcg ids) it had at the previous read: whose cells it may still
        # claim when they are read for the last time (a process that exited since)
        self._had: dict[str, tuple[frozenset, frozenset]] = {}
        # aging passes (model/hotness.py AgingPass): per memcg its lru_gen state and recent passes,
        # per cell the (pass seq, pages) of its recent finds that followed a pass
        self._memcg_seq: dict = {}
        self._passes: dict[int, tuple[H.AgingPass, ...]] = {}
        self.build: Build | None = None  # a program being compiled off the loop
        self.in_loop = False  # made by a reload inside the daemon's loop (the Engine sets it)

    def start(self) -> bool:
        """Compile and attach now, in this thread (the first start; tests)."""
        self._retry_at = None
        try:
            program = self.loader(self.cfg, self.fs)
        except Unavailable as e:
            program, error = None, e
        else:
            error = None
        return self._started_as(self.cfg, program, error)

    def _started_as(self, cfg: Bpf, program, error: BaseException | None) -> bool:
        """Take what a start gave: a program, Unavailable (down, retried later) or a bug (raised)."""
        if error is not None and not isinstance(error, Unavailable):
            raise error
        if self.program is not None and (program is not None or cfg != self.cfg):
            # a reload that recompiled: the old program served until now (and, when the new
            # one failed, stops now: the config in force is the new one, retried with backoff)
            self._close_program()
        if program is not None:
            # the new program's maps start from zero: its counts go on from the old one's
            # (nothing to carry on the first start: then this changes nothing)
            self.carry_over(self)
            self.cols, self._had = self.cols.forget_counts() if self.cols is not None else None, {}
        if cfg != self.cfg:
            self._memcg_seq, self._passes = {}, {}
            if self.cols is not None:
                self.cols.forget_finds()
        self.cfg = cfg
        if error is not None:
            self.program, self.reason = None, str(error)
            log.warning("source bpf: %s; trying again in %ds", error, self._schedule_retry())
            return False
        self.program = program
        self.reason = ""
        self._up_since = self.clock()
        log.info("source bpf: %s attached to vmscan:%s (compiled in %.1fs; "
                 "%d KiB regions, map of %d entries)", program_path(self.cfg), getattr(self.program, "event", "?"),
                 getattr(self.program, "compile_seconds", 0.0), self.cfg.region_size >> 10, self.cfg.max_regions)
        return True

    def _begin(self, cfg: Bpf) -> None:
        """Start compiling `cfg`'s program off the loop; the loop takes it in poll()."""
        self._retry_at = None
        if self.build is not None:
            self.build.abandon()
        self.build = Build(self.loader, cfg, self.fs)
        if self.program is None:
            self.reason = "compiling and attaching the program"

    def poll(self) -> bool:
        """Take a finished Build (the new program, or why it failed); True if one was taken."""
        build = self.build
        if build is None or not build.done.is_set():
            return False
        self.build = None
        self._started_as(build.cfg, build.program, build.error)
        return True

    # ------------------------------------------------------------ the Source protocol (sources/base.py)

    @classmethod
    def make(cls, config: Config, fs: FS, clock, wall) -> "BpfHotnessSource":
        return cls(config.bpf, fs, wall=wall, clock=clock)

    def configure(self, config: Config, probe: Probe, why: str) -> None:
        """Compile and attach on first use (~1 s; ~15 s under TCG), in-line before the daemon's
        loop, off it (Build) when a reload turned the source on; a reload that
        changes bpf: recompiles off the loop (Build) while the old program serves, and the
        counters go on from the old program's (carry_over)."""
        want = config.bpf
        if not self._started:
            self._started = True
            self.cfg = want
            if self.in_loop:  # a reload turned the source on: compile off the loop too
                self._begin(want)
            else:
                self.start()
            return
        if self.build is not None:
            if self.build.cfg == want:
                return  # already compiling that
            self.build.abandon()
            self.build = None
        if self.cfg != want:
            self._begin(want)
        elif self.program is None:  # a reload is also the way to say "try again now"
            self._backoff = RETRY_FIRST
            self.restart()

    def _schedule_retry(self) -> int:
        """The next start after the current backoff, which then doubles; returns the seconds."""
        wait = self._backoff
        self._retry_at = self.clock() + wait
        self._backoff = min(self._backoff * 2, RETRY_MAX)
        return round(wait)

    def restart(self) -> None:
        """Start a new program after a failed one, off the loop: its maps start from zero, so
        the counters go on from the old one's (as on a reload that recompiles)."""
        self.restarts += 1
        self._begin(self.cfg)

    def reschedule(self, within: float) -> None:
        pass

    def due_in(self) -> float:
        if self.build is not None:  # a cycle takes the new program: soon after it is ready
            return 0.0 if self.build.done.is_set() else BUILD_POLL
        return float("inf") if self._retry_at is None else self._retry_at - self.clock()

    def before_aging(self, inputs: Inputs) -> None:
        self.fs = inputs.fs
        self.prepare(inputs.config.targets, inputs.index, inputs.procs)

    def part(self, inputs: Inputs) -> Part:
        data = self.cycle(inputs.config.targets, inputs.index, inputs.procs, lruvecs=inputs.lruvecs)
        return Part((self.status(),), {"hotness": data})

    def carry_over(self, old: "BpfHotnessSource") -> None:
        """Continue the counters of the source this one replaces (a reload that changed bpf:
        recompiles the program, whose maps start from zero): exported counters never go down."""
        self.stats_base = self.stats = old.stats
        self.harvest_base = tuple(b + v for b, (_, v) in zip(old.harvest_base, old.harvested))
        self.harvested = tuple((n, 0) for n, _ in old.harvested)
        self.accessed = {name: Counter(c) for name, c in old.accessed.items()}

    def close(self) -> None:
        if self.build is not None:
            self.build.abandon()
            self.build = None
        self._close_program()

    def _close_program(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None
            self.reason = "stopped"
        self._retry_at = None

    def status(self) -> SourceStatus:
        return SourceStatus(NAME, self.program is not None, self.reason)

    def prepare(self, targets: tuple[Target, ...], index: dict[str, int], procs: ProcTable | None = None) -> None:
        """Resolve the targets and load them into the program's target maps, before
        aging, so that the aging about to run is counted."""
        self._procs = target_processes(targets, procs or ProcTable(self.fs, targets))
        self._memcgs = target_memcgs(targets, index)
        self.poll()
        if self.program is None and self.build is None and self._retry_at is not None \
                and self.clock() >= self._retry_at:
            self.restart()
        if self.program is None:
            return
        tgids = {p for ps in self._procs.values() for p in ps}
        ids = {i for ms in self._memcgs.values() for i in ms}
        try:
            self.program.set_targets(tgids, ids)
        except MAP_ERRORS as e:
            self._fail(f"updating the BPF target maps failed: {e}")

    def _fail(self, reason: str) -> None:
        self._close_program()
        self.reason = reason
        log.error("source bpf: %s; starting the program again in %ds", reason, self._schedule_retry())

    def cycle(self, targets: tuple[Target, ...], index: dict[str, int],
              procs: ProcTable | None = None, lruvecs=None) -> H.HotnessData | None:
        """Read the counts (after aging) and build this cycle's HotnessData. `lruvecs`: lru_gen's
        read after the aging (the Engine's), whose max_seq says which memcgs had an aging pass
        since the previous read; without it the data has no passes (heat per read, as before).

        The per-cell state and the snapshot's regions are numpy columns (model/heat_columns.py):
        no Python object per cell. The cyclic garbage collector is paused meanwhile all the same
        (a stand-in program's dump makes a dict per cell); one young-generation collection at the
        end sees what is left once."""
        with gc_paused(collect=0):
            data = self._cycle(targets, index, procs, lruvecs)
        # the cycle's numpy temporaries (a few MiB each at 65k cells, below the mmap threshold
        # many of them) are freed, but glibc keeps their heap pages: give them back
        trim()
        return data

    def _cycle(self, targets, index, procs, lruvecs) -> H.HotnessData | None:
        if self._procs is None:
            self.prepare(targets, index, procs)
        procs, memcgs = self._procs, self._memcgs
        self._procs = None
        if self.program is None:
            return None
        tgids = {p for ps in procs.values() for p in ps}
        ids = {i for ms in memcgs.values() for i in ms}
        import numpy as np

        from mglrud.model import heat_columns as C

        try:
            # Program.read_columns() decodes at C speed; stand-ins (tests' replays of captured dumps) dump
            read = getattr(self.program, "read_columns", None)
            if read is not None:
                raw = read()
                cells = raw.cells
            else:
                read = getattr(self.program, "read", None)
                raw = read() if read is not None else H.raw_from_dump(self.program.dump())
                cells = C.Cells.from_dict(raw.cells)
        except MAP_ERRORS as e:  # the kernel side went away: report, start again later
            self._fail(f"reading the BPF maps failed: {e}")
            return None
        if self.clock() - self._up_since >= self._backoff:
            self._backoff = RETRY_FIRST  # up for as long as it last waited: a later failure is a new one
        self.harvested = tuple((n, raw.harvest.get(n, 0)) for n in HARVESTERS)
        # stale: cells of no targeted process whose memcg is not targeted either, or whose process
        # is gone (tgid 0: an mm with no owner task, the tracepoint's convention; kept, it cannot
        # be looked up). The sets first (C speed): most cycles need no pass over the cells.
        cell_tgids, cell_ids = set(np.unique(cells.tgid).tolist()), set(np.unique(cells.memcg_id).tolist())
        alive = {t for t in cell_tgids - tgids if t == 0 or self.fs.proc(t).exists()}
        gone = cell_tgids - tgids - alive
        stale_rows = []
        if not cell_ids <= ids:
            stale_rows.append(np.flatnonzero(~isin(cells.tgid, tgids) & ~isin(cells.memcg_id, ids)))
        if gone:
            stale_rows.append(np.flatnonzero(isin(cells.memcg_id, ids) & isin(cells.tgid, gone)))
        stale_rows = np.concatenate(stale_rows) if stale_rows else np.zeros(0, np.int64)
        last = np.zeros(len(cells), bool)
        last[stale_rows] = True
        self.cols = C.step(self.cols if self.cols is not None else C.State.empty(), cells, raw.mono_ns, self.cfg.half_life)
        self._note_passes(lruvecs)
        self.stats = tuple(b + n for b, n in zip(self.stats_base, (raw.events, raw.matched, raw.dropped)))
        # built before the stale keys go, so that their last deltas reach the targets' counters:
        # a process gone since the previous read is no longer among a target's processes, but
        # what the kernel counted for it meanwhile (reclaim's look-around, aging by others) is
        # still in its cells, read now for the last time
        data = self._build(targets, procs, memcgs, raw.mono_ns, len(cells) - int(last.sum()), last,
                           lruvecs is not None)
        data = dataclasses.replace(data, harvested=tuple((n, b + v) for (n, v), b in
                                                         zip(self.harvested, self.harvest_base)))
        if lruvecs is not None:
            data = self._with_passes(data, memcgs)
        self._had = {t.name: (frozenset(procs.get(t.name, ())), frozenset(memcgs.get(t.name, ()))) for t in targets}
        if len(stale_rows):
            self.program.delete(cells.keys(stale_rows))
            self.cols = self.cols.take(~last)
        return data

    @property
    def state(self) -> dict:
        """{CellKey: CellState} of the cells counted (hotness.step()'s form; tests, debugging)."""
        return {} if self.cols is None else self.cols.as_dict()

    def _note_passes(self, lruvecs) -> dict:
        """Which memcgs had an aging pass since the previous read (their max_seq moved), and
        tag this read's finds in them with that pass's seq. What one read finds after a pass
        is what the pass found: the Engine reads right after it ages."""
        if lruvecs is None:
            return {}
        self._memcg_seq, moved = H.passes_seen(self._memcg_seq, lruvecs, self.wall())
        for mid, p in moved.items():
            self._passes[mid] = ((p,) + self._passes.get(mid, ()))[:H.HISTORY]
        for mid in set(self._passes) - set(self._memcg_seq):
            del self._passes[mid]  # the memcg is gone
        from mglrud.model import heat_columns as C

        self.cols = C.tag_finds(self.cols, moved)
        return moved

    def _with_passes(self, data: H.HotnessData, memcgs: dict) -> H.HotnessData:
        """`data` with the recent passes of the memcgs shown (the regions carry their
        pass-tagged finds already: _build's found_in)."""
        ids = {i for ms in memcgs.values() for i in ms}
        for t in data.targets:
            cols = getattr(t.regions, "cols", None)  # heat_columns.RegionColumns: no object per cell
            ids.update(set(cols["memcg_id"].tolist()) if cols is not None else map(itemgetter(1), t.regions))
        passes = sorted((p for i in ids for p in self._passes.get(i, ())), key=lambda p: (-p.at, p.memcg_id))
        return dataclasses.replace(data, passes=tuple(passes))


# numpy decodes the maps (Program.read) and pagemap (model/residency.py)
NO_NUMPY = "numpy cannot be found (it decodes the BPF maps and pagemap): apt install python3-numpy"


def probe(fs: FS) -> Probe:
    """The tracepoint of mglrud's kernel patch (else, on a stock kernel, the accessed-bit probe)
    and bcc; whether the program compiles
    and attaches is only known when the source starts (sources/bpf_hotness.py)."""
    # the range event is the series' main patch; the per-entry one its optional debugging patch
    event = fs.tracefs("events", "vmscan", "mm_vmscan_lru_gen_young")
    try:
        found = fs.tracefs("events", "vmscan", "mm_vmscan_lru_gen_young_range").is_dir() or event.is_dir()
    except PermissionError:
        return Probe("bpf", False, f"{event} is not readable: run mglrud as root")
    if not found:
        # a kernel without mglrud's patch: the accessed-bit probe (sources/bpf_probe.py) where it can run
        check = bpf_probe.probe(fs)
        if check.usable and importlib.util.find_spec("numpy") is None:
            return Probe("bpf", False, NO_NUMPY)
        if check.usable:
            return Probe("bpf", True, check.detail)
        return Probe("bpf", False, f"no tracepoint {event} (a kernel without mglrud's patch, kernel-patch/, "
                                   f"or tracefs not mounted), and {check.detail}")
    # Found, not imported: importing bcc maps LLVM into the daemon for good (~40 MiB resident);
    # only the short-lived loader child imports it (mglrud/bpf_loader.py), and says so if it fails.
    try:
        spec = importlib.util.find_spec("bcc")  # Debian's python3-bpfcc, not PyPI's "bcc"
    except (ImportError, ValueError) as e:
        spec, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "no module named bcc"
    if spec is None:
        return Probe("bpf", False, f"the tracepoint is present, but bcc cannot be found ({why}): "
                                   f"apt install python3-bpfcc, run with /usr/bin/python3")
    if importlib.util.find_spec("numpy") is None:
        return Probe("bpf", False, NO_NUMPY)
    return Probe("bpf", True, f"{event} present and bcc installed")
