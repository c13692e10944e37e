"""Source: per-region access heat from bpf/hotness.bpf.c on mglrud's MGLRU tracepoint.

The tracepoint vmscan:mm_vmscan_lru_gen_young comes with mglrud's kernel patch
(kernel-patch/; Documentation/admin-guide/mm/multigen_lru.rst, "Tracing accessed
pages"): the aging walk fires it for every young page-table entry it finds.
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
check`, the log) and the other sources carry on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import struct
import time
from collections import Counter
from pathlib import Path

from mglrud import bpf_loader, bpfsys
from mglrud.config import Bpf, Config, Target, memcg_matches
from mglrud.fs import FS
from mglrud.model import SourceStatus
from mglrud.model import hotness as H
from mglrud.sources.base import Inputs, Part, Probe
from mglrud.sources.bpf_heat import HeatBuilder
from mglrud.targets import ProcTable

log = logging.getLogger(__name__)

NAME = "bpf"
EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young")
# One event per PTE table / THP / look-around window with the count of young entries
# (patch 3 of kernel-patch/): what the program attaches to when the kernel has it, because
# a program on the per-entry event multiplies the time of an aging pass.
RANGE_EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young_range")
DEFAULT_PROGRAM = Path(__file__).resolve().parents[2] / "bpf" / "hotness.bpf.c"
MAX_TGIDS = 4096
MAX_MEMCGS = 4096


class Unavailable(Exception):
    """The BPF source cannot run here; the message says why and what to do."""


def program_path(cfg: Bpf) -> Path:
    return Path(cfg.program) if cfg.program else DEFAULT_PROGRAM


def cflags(cfg: Bpf, range_event: bool = False) -> list[str]:
    return [f"-DREGION_SHIFT={cfg.region_shift}", f"-DMAX_REGIONS={cfg.max_regions}",
            f"-DMAX_TGIDS={MAX_TGIDS}", f"-DMAX_MEMCGS={MAX_MEMCGS}"] + (["-DUSE_RANGE_EVENT"] if range_event else [])


def pick_event(cfg: Bpf, fs: FS) -> str | None:
    """The tracepoint to attach to: the range event when the kernel has it and regions
    are at least a PTE table (2 MiB), else the per-entry event; None if neither exists."""
    try:
        if fs.tracefs(*RANGE_EVENT).is_dir() and cfg.region_shift >= 21:
            return RANGE_EVENT[-1]
        return EVENT[-1] if fs.tracefs(*EVENT).is_dir() else None
    except PermissionError:  # tracefs is 0700 root
        raise Unavailable(f"{fs.tracefs(*EVENT)} is not readable: run mglrud as root") from None


# bpf/hotness.bpf.c's struct region_key and struct region_val, as the bpf(2) syscall returns them
KEY = struct.Struct("<QIHBB")  # region, tgid, memcg_id, node, lru
VAL = struct.Struct("<QQQ")  # pages, events, last_ns
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
MAPS = ["heat", "stats", "target_tgids", "target_memcgs"]
STATS = ("events", "matched", "dropped")


class Program:
    """bpf/hotness.bpf.c compiled by bcc and attached to the tracepoint, in a short-lived
    child (mglrud/bpf_loader.py: bcc and LLVM would stay resident in the daemon); the
    daemon keeps the maps' and the attachment's descriptors and reads the maps with
    bpf(2) (mglrud/bpfsys.py). Tests of the source give it a stand-in."""

    def __init__(self, cfg: Bpf, fs: FS, event: str | None = None):
        # `event` forces one of the two tracepoints (benchmarks compare them)
        self.event = event or pick_event(cfg, fs)
        if self.event is None:
            raise Unavailable(f"{fs.tracefs(*EVENT)} missing: the kernel lacks mglrud's tracepoint "
                              f"(kernel-patch/), or tracefs is not mounted")
        path = program_path(cfg)
        if not path.is_file():
            raise Unavailable(f"BPF program {path} not found (bpf.program)")
        started = time.monotonic()
        try:
            fds, self._held, self.child_seconds = bpf_loader.load(
                path, cflags(cfg, self.event == RANGE_EVENT[-1]), self.event, MAPS)
        except bpf_loader.LoadError as e:
            raise Unavailable(str(e)) from None
        self.maps: dict[str, bpfsys.Map] = {}
        try:
            for name in MAPS:
                fd = fds.pop(name)
                try:
                    self.maps[name] = bpfsys.Map(fd)
                except OSError:
                    os.close(fd)
                    raise
            heat = self.maps["heat"]
            if (heat.key_size, heat.value_size) != (KEY.size, VAL.size):
                raise Unavailable(f"{path}: map heat has {heat.key_size}-byte keys and {heat.value_size}-byte "
                                  f"values, mglrud reads {KEY.size} and {VAL.size} (mglrud/sources/bpf_hotness.py)")
        except (OSError, Unavailable) as e:
            for fd in fds.values():
                os.close(fd)
            self.close()
            raise e if isinstance(e, Unavailable) else Unavailable(f"cannot read the BPF maps: {e}") from None
        self.compile_seconds = time.monotonic() - started
        self.capacity = cfg.max_regions

    def set_targets(self, tgids: set[int], memcg_ids: set[int]) -> None:
        for name, want in (("target_tgids", tgids), ("target_memcgs", memcg_ids)):
            table = self.maps[name]
            have = {U32.unpack(k)[0] for k in table.keys()}
            for k in have - want:
                table.delete(U32.pack(k))
            for k in sorted(want - have):
                table.update(U32.pack(k), b"\x01")

    def dump(self) -> dict:
        """The maps as plain data (the form tests/fixtures/bpf/ holds)."""
        heat = self.maps["heat"]
        cells = []
        for k, v in heat.items():
            region, tgid, memcg_id, node, lru = KEY.unpack(k)
            cells.append({"tgid": tgid, "memcg_id": memcg_id, "region": region, "node": node, "lru": lru,
                          "percpu": [list(VAL.unpack(c)) for c in heat.percpu_values(v)]})
        stats = self.maps["stats"]
        zero = bytes(stats.slot * stats.ncpus)  # an array has every key; never absent in practice
        out = {"stats": {n: [U64.unpack(c)[0] for c in stats.percpu_values(stats.lookup(U32.pack(i)) or zero)]
                         for i, n in enumerate(STATS)},
               "heat": cells}
        out["mono_ns"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return out

    def delete(self, keys) -> None:
        heat = self.maps["heat"]
        for c in keys:
            heat.delete(KEY.pack(c.region, c.tgid, c.memcg_id, c.node, H.LRU_NAMES.index(c.lru)))

    def close(self) -> None:
        """Closing the perf event's descriptor detaches the program; the maps go with the last descriptor."""
        for m in self.maps.values():
            m.close()
        self.maps = {}
        for fd in self._held:
            try:
                os.close(fd)
            except OSError:
                pass
        self._held = []


# ---------------------------------------------------------------- targets

def target_processes(targets: tuple[Target, ...], procs: ProcTable) -> dict[str, tuple[int, ...]]:
    """Process targets -> their tgids now."""
    return {t.name: tuple(p.pid for p in procs.of(t)) for t in targets if t.kind != "memcg"}


def target_memcgs(targets: tuple[Target, ...], index: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Memcg targets -> memcg ids, from lru_gen's path -> id index of this cycle."""
    return {t.name: tuple(sorted({i for p, i in index.items() if memcg_matches(t.pattern, p)}))
            for t in targets if t.kind == "memcg"}


# ---------------------------------------------------------------- the source

class BpfHotnessSource(HeatBuilder):
    def __init__(self, cfg: Bpf, fs: FS, loader=Program, wall=time.time):
        self.cfg, self.fs, self.loader, self.wall = cfg, fs, loader, wall
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.program = None
        self._started = False  # start() tried (configure() starts it once)
        self.reason = "not started"
        self.state: dict = {}
        self.accessed: dict[str, Counter] = {}  # target -> (node, lru) -> bytes, cumulative
        self.stats = (0, 0, 0)
        self.stats_base = (0, 0, 0)  # counts of the programs before this one (see carry_over)
        self._procs: dict | None = None
        self._memcgs: dict = {}
        # target name -> (tgids, memcg ids) it had at the previous read: whose cells it may still
        # claim when they are read for the last time (a process that exited since)
        self._had: dict[str, tuple[frozenset, frozenset]] = {}
        # aging passes (model/hotness.py AgingPass): per memcg its lru_gen state and recent passes,
        # per cell the (pass seq, pages) of its recent finds that followed a pass
        self._memcg_seq: dict = {}
        self._passes: dict[int, tuple[H.AgingPass, ...]] = {}
        self._found_in: dict[H.CellKey, tuple[tuple[int, int], ...]] = {}

    def start(self) -> bool:
        try:
            self.program = self.loader(self.cfg, self.fs)
        except Unavailable as e:
            self.program, self.reason = None, str(e)
            log.warning("source bpf: %s", e)
            return False
        self.reason = ""
        log.info("source bpf: %s attached to vmscan:%s (compiled in %.1fs; "
                 "%d KiB regions, map of %d entries)", program_path(self.cfg), getattr(self.program, "event", "?"),
                 getattr(self.program, "compile_seconds", 0.0), self.cfg.region_size >> 10, self.cfg.max_regions)
        return True

    # ------------------------------------------------------------ the Source protocol (sources/base.py)

    @classmethod
    def make(cls, config: Config, fs: FS, clock, wall) -> "BpfHotnessSource":
        return cls(config.bpf, fs)

    def configure(self, config: Config, probe: Probe, why: str) -> None:
        """Compile and attach on first use (~1 s; ~15 s under TCG); a reload that changes bpf:
        recompiles, and the counters go on from the old program's (carry_over)."""
        if self._started and self.cfg != config.bpf:
            self.close()
            # the new program's maps start from zero: its counts go on from these
            self.stats_base, self.state, self._had = self.stats, {}, {}
            self._memcg_seq, self._passes, self._found_in = {}, {}, {}
            self.cfg, self._started = config.bpf, False
        if not self._started:
            self._started = True
            self.start()

    def reschedule(self, within: float) -> None:
        pass

    def due_in(self) -> float:
        return float("inf")

    def before_aging(self, inputs: Inputs) -> None:
        self.fs = inputs.fs
        self.prepare(inputs.config.targets, inputs.index, inputs.procs)

    def part(self, inputs: Inputs) -> Part:
        data = self.cycle(inputs.config.targets, inputs.index, inputs.procs, lruvecs=inputs.lruvecs)
        return Part((self.status(),), {"hotness": data})

    def carry_over(self, old: "BpfHotnessSource") -> None:
        """Continue the counters of the source this one replaces (a reload that changed bpf:
        recompiles the program, whose maps start from zero): exported counters never go down."""
        self.stats_base = old.stats
        self.accessed = {name: Counter(c) for name, c in old.accessed.items()}

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
            self.program = None
            self.reason = "stopped"

    def status(self) -> SourceStatus:
        return SourceStatus(NAME, self.program is not None, self.reason)

    def prepare(self, targets: tuple[Target, ...], index: dict[str, int], procs: ProcTable | None = None) -> None:
        """Resolve the targets and load them into the program's target maps, before
        aging, so that the aging about to run is counted."""
        self._procs = target_processes(targets, procs or ProcTable(self.fs, targets))
        self._memcgs = target_memcgs(targets, index)
        if self.program is None:
            return
        tgids = {p for ps in self._procs.values() for p in ps}
        ids = {i for ms in self._memcgs.values() for i in ms}
        try:
            self.program.set_targets(tgids, ids)
        except Exception as e:
            self._fail(f"updating the BPF target maps failed: {e}")

    def _fail(self, reason: str) -> None:
        log.error("source bpf: %s", reason)
        self.close()
        self.reason = reason

    def cycle(self, targets: tuple[Target, ...], index: dict[str, int],
              procs: ProcTable | None = None, lruvecs=None) -> H.HotnessData | None:
        """Read the counts (after aging) and build this cycle's HotnessData. `lruvecs`: lru_gen's
        read after the aging (the Engine's), whose max_seq says which memcgs had an aging pass
        since the previous read; without it the data has no passes (heat per read, as before)."""
        if self._procs is None:
            self.prepare(targets, index, procs)
        procs, memcgs = self._procs, self._memcgs
        self._procs = None
        if self.program is None:
            return None
        tgids = {p for ps in procs.values() for p in ps}
        ids = {i for ms in memcgs.values() for i in ms}
        try:
            dump = self.program.dump()
        except Exception as e:  # the kernel side went away: report, do not crash the loop
            self._fail(f"reading the BPF maps failed: {e}")
            return None
        raw = H.raw_from_dump(dump)
        stale = [k for k in raw.cells if k.tgid not in tgids and k.memcg_id not in ids]
        # tgid 0: an mm with no owner task (the tracepoint's convention); kept, it cannot be looked up
        alive = {t for t in {k.tgid for k in raw.cells} - tgids if t == 0 or self.fs.proc(t).exists()}
        stale += [k for k in raw.cells if k.memcg_id in ids and k.tgid not in tgids and k.tgid not in alive]
        self.state = H.step(self.state, raw, self.cfg.half_life)
        self._note_passes(lruvecs)
        self.stats = tuple(b + n for b, n in zip(self.stats_base, (raw.events, raw.matched, raw.dropped)))
        # built before the stale keys go, so that their last deltas reach the targets' counters:
        # a process gone since the previous read is no longer among a target's processes, but
        # what the kernel counted for it meanwhile (reclaim's look-around, aging by others) is
        # still in its cells, read now for the last time
        data = self._build(targets, procs, memcgs, raw.mono_ns, len(raw.cells) - len(set(stale)), set(stale))
        if lruvecs is not None:
            data = self._with_passes(data, memcgs)
        self._had = {t.name: (frozenset(procs.get(t.name, ())), frozenset(memcgs.get(t.name, ()))) for t in targets}
        if stale:
            self.program.delete(stale)
            for k in stale:
                self.state.pop(k, None)
                self._found_in.pop(k, None)
        return data

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
        for k, s in self.state.items():
            p = moved.get(k.memcg_id)
            if p is not None and s.delta_pages:
                self._found_in[k] = (((p.seq, s.delta_pages),) + self._found_in.get(k, ()))[:H.HISTORY]
        for k in set(self._found_in) - set(self.state):
            del self._found_in[k]
        return moved

    def _with_passes(self, data: H.HotnessData, memcgs: dict) -> H.HotnessData:
        """`data` with each region's pass-tagged finds and the recent passes of the memcgs shown."""
        shift = self.cfg.region_shift
        ids = {i for ms in memcgs.values() for i in ms}
        targets = []
        for t in data.targets:
            regions = []
            for r in t.regions:
                ids.add(r.memcg_id)
                found_in = self._found_in.get(H.CellKey(r.tgid, r.memcg_id, r.start >> shift, r.node, r.lru), ())
                regions.append(dataclasses.replace(r, found_in=found_in) if found_in else r)
            targets.append(dataclasses.replace(t, regions=tuple(regions)))
        passes = sorted((p for i in ids for p in self._passes.get(i, ())), key=lambda p: (-p.at, p.memcg_id))
        return dataclasses.replace(data, targets=tuple(targets), passes=tuple(passes))


def probe(fs: FS) -> Probe:
    """The tracepoint of mglrud's kernel patch and bcc; whether the program compiles
    and attaches is only known when the source starts (sources/bpf_hotness.py)."""
    event = fs.tracefs("events", "vmscan", "mm_vmscan_lru_gen_young")
    try:
        found = event.is_dir()
    except PermissionError:
        return Probe("bpf", False, f"{event} is not readable: run mglrud as root")
    if not found:
        return Probe("bpf", False, f"no tracepoint {event}: a kernel without mglrud's patch (kernel-patch/), "
                                   f"or tracefs not mounted")
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
    return Probe("bpf", True, f"{event} present and bcc installed")
