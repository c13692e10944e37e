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
counts to the pure functions of mglrud/hotness.py. Residency comes from
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

import logging
import os
import struct
import time
from collections import Counter
from pathlib import Path

from mglrud import bpf_loader, bpfsys
from mglrud import hotness as H
from mglrud.config import Bpf, Target, memcg_matches
from mglrud.fs import FS
from mglrud.model import SourceStatus
from mglrud.programs import bpf_program
from mglrud.targets import _selects, read_proc, scan_procs

log = logging.getLogger(__name__)

NAME = "bpf"
EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young")
# One event per PTE table / THP / look-around window with the count of young entries
# (patch 3 of kernel-patch/): what the program attaches to when the kernel has it, because
# a program on the per-entry event multiplies the time of an aging pass.
RANGE_EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young_range")
DEFAULT_PROGRAM = bpf_program("hotness.bpf.c")  # package data in a wheel, bpf/ in a checkout
MAX_TGIDS = 4096
MAX_MEMCGS = 4096
# A process whose mapped-and-resident address space is larger than this is not
# read through pagemap (8 bytes per 4 KiB page: 16 GiB -> 32 MiB read per cycle).
MAX_SCAN_BYTES = 16 << 30


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

def target_processes(targets: tuple[Target, ...], fs: FS) -> dict[str, tuple[int, ...]]:
    """Process targets -> their tgids now."""
    kinds = {t.kind for t in targets}
    if kinds & {"comm", "cmdline", "unit"}:
        procs = scan_procs(fs, cmdline="cmdline" in kinds)
    else:
        procs = [p for p in (read_proc(fs, t.value, False) for t in targets if t.kind == "pid") if p]
    return {t.name: tuple(p.pid for p in procs if _selects(t, p)) for t in targets if t.kind != "memcg"}


def target_memcgs(targets: tuple[Target, ...], index: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Memcg targets -> memcg ids, from lru_gen's path -> id index of this cycle."""
    return {t.name: tuple(sorted({i for p, i in index.items() if memcg_matches(t.pattern, p)}))
            for t in targets if t.kind == "memcg"}


# ---------------------------------------------------------------- residency

def node_of_pfn(fs: FS):
    """(pfn -> node from the zones /proc/zoneinfo lists (-1 when unknown), the only node
    when there is one, else None)."""
    try:
        zones = H.parse_zoneinfo(fs.proc("zoneinfo").read_text())
    except OSError:
        return (lambda pfn: -1), None
    nodes = {n for _, _, n in zones}
    return H.pfn_node_table(zones), (nodes.pop() if len(nodes) == 1 else None)


def read_residency(fs: FS, pid: int, region_shift: int, page_size: int, nodes):
    """(mapped spans [(start, end)], {(region, node, lru): pages} or None, why not) of one
    process; None if it is gone. The spans (from smaps) are there even when pagemap is not."""
    from mglrud.sources.procfs import is_shmem, parse_smaps

    try:
        vmas = [e for e in parse_smaps(fs.proc(pid, "smaps").read_text()) if e.rss > 0]
    except (OSError, ValueError):
        return None
    spans = [(e.start, e.end) for e in vmas]
    if sum(e.end - e.start for e in vmas) > MAX_SCAN_BYTES:
        return spans, None, f"mapped resident space over {MAX_SCAN_BYTES >> 30} GiB; residency not read"
    cells: Counter = Counter()
    try:
        with open(fs.proc(pid, "pagemap"), "rb") as f:
            for e in vmas:
                f.seek(e.start // page_size * 8)
                data = f.read((e.end - e.start) // page_size * 8)
                vma = H.Vma(e.start, e.end, e.path, is_shmem(e.path))
                node_of, only = nodes
                if only is not None:
                    cells.update(H.residency_one_node(vma, data, page_size, region_shift, only))
                else:
                    cells.update(H.residency(vma, memoryview(data).cast("Q").tolist(), page_size, region_shift,
                                             node_of))
    except OSError as e:
        return spans, None, f"cannot read pagemap: {e.strerror}"
    return spans, dict(cells), ""


# ---------------------------------------------------------------- the source

class BpfHotnessSource:
    def __init__(self, cfg: Bpf, fs: FS, loader=Program, wall=time.time):
        self.cfg, self.fs, self.loader, self.wall = cfg, fs, loader, wall
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.program = None
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

    def prepare(self, targets: tuple[Target, ...], index: dict[str, int]) -> None:
        """Resolve the targets and load them into the program's target maps, before
        aging, so that the aging about to run is counted."""
        self._procs = target_processes(targets, self.fs)
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

    def cycle(self, targets: tuple[Target, ...], index: dict[str, int]) -> H.HotnessData | None:
        """Read the counts (after aging) and build this cycle's HotnessData."""
        if self._procs is None:
            self.prepare(targets, index)
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
        self.stats = tuple(b + n for b, n in zip(self.stats_base, (raw.events, raw.matched, raw.dropped)))
        # built before the stale keys go, so that their last deltas reach the targets' counters:
        # a process gone since the previous read is no longer among a target's processes, but
        # what the kernel counted for it meanwhile (reclaim's look-around, aging by others) is
        # still in its cells, read now for the last time
        data = self._build(targets, procs, memcgs, raw.mono_ns, len(raw.cells) - len(set(stale)), set(stale))
        self._had = {t.name: (frozenset(procs.get(t.name, ())), frozenset(memcgs.get(t.name, ()))) for t in targets}
        if stale:
            self.program.delete(stale)
            for k in stale:
                self.state.pop(k, None)
        return data

    def _build(self, targets, procs, memcgs, now_ns: int, entries: int, last=frozenset()) -> H.HotnessData:
        """`last`: cells read for the last time (deleted from the map after this); those of
        processes or memcgs a target had at the previous read count in its accessed bytes."""
        cfg, page = self.cfg, self.page_size
        nodes = node_of_pfn(self.fs)
        residency_cache: dict[int, object] = {}
        notes = []
        out = []
        for t in targets:
            had_tgids, had_ids = self._had.get(t.name, (frozenset(), frozenset()))
            if t.kind == "memcg":
                ids = set(memcgs.get(t.name, ()))
                claimed = {k: s for k, s in self.state.items()
                           if k.memcg_id in ids or (k in last and k.memcg_id in had_ids)}
            else:
                pids = set(procs.get(t.name, ()))
                claimed = {k: s for k, s in self.state.items()
                           if k.tgid in pids or (k in last and k.tgid in had_tgids)}
            acc = self.accessed.setdefault(t.name, Counter())
            for k, s in claimed.items():
                if s.delta_pages:
                    acc[(k.node, k.lru)] += s.delta_pages * page
            # cells read for the last time count above, but are not shown: their process is gone
            mine = {k: s for k, s in claimed.items() if k not in last}
            if t.kind == "memcg":
                by_tgid = Counter(k.tgid for k in mine)
                scan = [tg for tg, _ in by_tgid.most_common(cfg.max_processes) if tg]
            else:
                ids = {k.memcg_id for k in mine}
                scan = sorted(pids)[: cfg.max_processes]
                if len(pids) > cfg.max_processes:
                    notes.append(f"target {t.name}: {len(pids)} processes; residency read for "
                                 f"{cfg.max_processes} (bpf.max_processes)")
            spans_in, resident = [], {}
            for tg in scan:
                if tg not in residency_cache:
                    residency_cache[tg] = read_residency(self.fs, tg, cfg.region_shift, page, nodes)
                r = residency_cache[tg]
                if r is None:
                    continue
                spans, cells, why = r
                spans_in += [(tg, s, e) for s, e in spans]
                if cells is None:
                    notes.append(f"process {tg}: {why}")
                    continue
                for (region, node, lru), n in cells.items():
                    resident[(tg, region, node, lru)] = n
            regions = self._regions(mine, resident, set(scan), now_ns)
            buckets = ()
            if t.kind != "memcg":
                buckets = self._buckets(spans_in, mine)
            out.append(H.TargetHeat(
                name=t.name, kind=t.kind, tgids=tuple(scan), memcg_ids=tuple(sorted(ids)),
                regions=regions, buckets=buckets,
                accessed_bytes_total=tuple(sorted((n, l, b) for (n, l), b in acc.items()))))
        for name in set(self.accessed) - {t.name for t in targets}:
            del self.accessed[name]
        events, matched, dropped = self.stats
        return H.HotnessData(region_size=cfg.region_size, half_life=cfg.half_life, page_size=page,
                             targets=tuple(out), events=events, matched=matched, dropped=dropped,
                             map_entries=entries, map_capacity=cfg.max_regions, notes=tuple(dict.fromkeys(notes)),
                             event=getattr(self.program, "event", ""))

    def _regions(self, mine: dict, resident: dict, scanned: set[int], now_ns: int) -> tuple[H.RegionHeat, ...]:
        shift = self.cfg.region_shift
        memcg_of = {}
        for k in mine:
            memcg_of.setdefault(k.tgid, k.memcg_id)
        out = []
        seen = set()
        for k, s in mine.items():
            rk = (k.tgid, k.region, k.node, k.lru)
            seen.add(rk)
            res = resident.get(rk, 0) if k.tgid in scanned else None
            found = tuple((max(0.0, (now_ns - t) / 1e9), n) for t, n in reversed(s.history))
            out.append(H.RegionHeat(k.tgid, k.memcg_id, k.region << shift, k.node, k.lru, res, s.delta_pages,
                                    s.total_pages, s.rate, H.idle_seconds(s, now_ns), found))
        for rk, n in resident.items():
            if rk not in seen:
                tg, region, node, lru = rk
                out.append(H.RegionHeat(tg, memcg_of.get(tg, 0), region << shift, node, lru, n, 0, 0, 0.0,
                                        float("inf")))
        out.sort(key=lambda r: (r.tgid, r.start, r.node, r.lru))
        return tuple(out)

    def _buckets(self, spans_in, mine) -> tuple[H.HeatBucket, ...]:
        cfg, page = self.cfg, self.page_size
        spans = H.collapsed_spans(spans_in)
        rate: Counter = Counter()
        latest: Counter = Counter()
        for k, s in mine.items():
            rate[(k.tgid, k.region)] += s.rate * page
            latest[(k.tgid, k.region)] += s.delta_pages * page
        heat = H.address_histogram(spans, dict(rate), cfg.region_shift, cfg.heat_buckets)
        acc = H.address_histogram(spans, dict(latest), cfg.region_shift, cfg.heat_buckets)
        ranges = H.bucket_ranges(spans, cfg.heat_buckets)
        return tuple(H.HeatBucket(tuple(r), h, round(a)) for r, h, a in zip(ranges, heat, acc))

