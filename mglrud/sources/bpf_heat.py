"""The BPF source's second half: from counted cells to each target's HotnessData.

The counts say which regions the aging walk found accessed; what is resident,
and on which node, comes from /proc/PID/smaps (which mappings hold pages),
/proc/PID/pagemap (which pages; Documentation/admin-guide/mm/pagemap.rst) and,
on a machine with several nodes, move_pages(2) with nodes=NULL (man 2
move_pages: the node each page is on), read here, so that resident regions never
found accessed show up too. pagemap's page frame numbers would say the node as
well, but the kernel shows them only to CAP_SYS_ADMIN, which the shipped unit
drops (without it every page read node -1); move_pages needs only ptrace read
access to the process (CAP_SYS_PTRACE, which the unit keeps for the /proc source). The maths is in mglrud/model/hotness.py; sources/bpf_hotness.py mixes
this in.
"""

from __future__ import annotations

import array
import ctypes
import errno
import math
import os
import platform
from collections import Counter
from operator import itemgetter

from mglrud.fs import FS
from mglrud.model import hotness as H
from mglrud.sources.smaps import is_shmem, parse_smaps

# A process whose mapped-and-resident address space is larger than this is not
# read through pagemap (8 bytes per 4 KiB page: 16 GiB -> 32 MiB read per cycle).
MAX_SCAN_BYTES = 16 << 30
# pagemap is read this much address space at a time (2 MiB of entries): what a read and its
# decode hold at once stays the same for a 1 GiB mapping and a 64 GiB one (the counts add up
# over the pieces, a region split between two of them included)
READ_BYTES = 1 << 30


# move_pages(2) is asked about this many pages per call: 64 KiB of addresses, 16 KiB of statuses
CHUNK_PAGES = 8192
_SYS_MOVE_PAGES = {"x86_64": 279, "aarch64": 239, "ppc64le": 301, "s390x": 310}.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def move_pages_status(pid: int, start: int, npages: int, page_size: int) -> bytes:
    """move_pages(pid, npages, pages, NULL, status, 0) for the pages from `start` on: the
    status array's bytes (a little-endian int per page: its node, or -errno such as -ENOENT
    when not present). Raises OSError: EPERM without ptrace access, ENOSYS without
    CONFIG_MIGRATION, ESRCH when the process is gone."""
    if _SYS_MOVE_PAGES is None:
        raise OSError(errno.ENOSYS, f"move_pages(2) number unknown for {platform.machine()}")
    import numpy as np  # the addresses at C speed (a Python int per page cost 20 ms a GiB)

    pages = np.arange(start, start + npages * page_size, page_size, dtype=np.uint64)
    status = array.array("i", bytes(4 * npages))
    r = _libc.syscall(ctypes.c_long(_SYS_MOVE_PAGES), ctypes.c_long(pid), ctypes.c_ulong(npages),
                      ctypes.c_void_p(pages.ctypes.data), None,
                      ctypes.c_void_p(status.buffer_info()[0]), ctypes.c_int(0))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return status.tobytes()


def residency_move_pages(pid: int, vma: H.Vma, data: bytes, page_size: int, region_shift: int,
                         status_of=move_pages_status) -> dict:
    """A VMA's cells with the node of each page from move_pages(2), CHUNK_PAGES at a time;
    a chunk pagemap shows without any present page is not asked about."""
    cells: Counter = Counter()
    npages = len(data) // 8
    for i in range(0, npages, CHUNK_PAGES):
        n = min(CHUNK_PAGES, npages - i)
        part = data[8 * i:8 * (i + n)]
        if not any(part[7::8]):  # no page of the chunk present (or swapped): nothing to ask
            continue
        start = vma.start + i * page_size
        status = status_of(pid, start, n, page_size)
        sub = H.Vma(start, start + n * page_size, vma.path, vma.shmem)
        if max(memoryview(status).cast("i")) < H.NODE_BYTES_MAX:
            cells.update(H.residency_by_status(sub, part, status, page_size, region_shift))
        else:  # a node beyond 63: one Python step per page, for this chunk only
            cells.update(H.residency_per_page(sub, part, memoryview(status).cast("i"), page_size, region_shift))
    return dict(cells)


def node_of_pfn(fs: FS):
    """(pfn -> node from the zones /proc/zoneinfo lists (-1 when unknown), the only node
    when there is one, else None)."""
    try:
        zones = H.parse_zoneinfo(fs.proc("zoneinfo").read_text())
    except OSError:
        return (lambda pfn: -1), None
    nodes = {n for _, _, n in zones}
    return H.pfn_node_table(zones), (nodes.pop() if len(nodes) == 1 else None)


def read_residency(fs: FS, pid: int, region_shift: int, page_size: int, nodes, status_of=move_pages_status):
    """(mapped spans [(start, end)], {(region, node, lru): pages} or None, why not) of one
    process; None if it is gone. The spans (from smaps) are there even when pagemap is not.
    `nodes` is node_of_pfn()'s answer; with several nodes each page's node comes from
    move_pages(2) (`status_of`), or, where the kernel refuses that (ENOSYS: no
    CONFIG_MIGRATION; EPERM: a seccomp filter or LSM), from pagemap's PFNs (node -1 when
    the kernel hides them, i.e. without CAP_SYS_ADMIN)."""
    try:
        vmas = [e for e in parse_smaps(fs.proc(pid, "smaps").read_text()) if e.rss > 0]
    except (OSError, ValueError):
        return None
    spans = [(e.start, e.end) for e in vmas]
    if sum(e.end - e.start for e in vmas) > MAX_SCAN_BYTES:
        return spans, None, f"mapped resident space over {MAX_SCAN_BYTES >> 30} GiB; residency not read"
    cells: Counter = Counter()
    node_of, only = nodes
    try:
        with open(fs.proc(pid, "pagemap"), "rb") as f:
            for e, lo, hi in ((e, lo, min(e.end, lo + READ_BYTES)) for e in vmas
                              for lo in range(e.start, e.end, READ_BYTES)):
                f.seek(lo // page_size * 8)
                data = f.read((hi - lo) // page_size * 8)
                vma = H.Vma(lo, hi, e.path, is_shmem(e.path))
                if only is not None:
                    cells.update(H.residency_one_node(vma, data, page_size, region_shift, only))
                    continue
                if status_of is not None:
                    try:
                        cells.update(residency_move_pages(pid, vma, data, page_size, region_shift, status_of))
                        continue
                    except OSError as err:
                        if err.errno in (errno.ESRCH, errno.ENOENT):
                            return None  # gone meanwhile
                        status_of = None  # refused: the PFNs, for this and the next mappings
                cells.update(H.residency(vma, data, page_size, region_shift, node_of))  # the bytes: no int per page
    except OSError as e:
        return spans, None, f"cannot read pagemap: {e.strerror}"
    return spans, dict(cells), ""


class HeatBuilder:
    """Per-target assembly for BpfHotnessSource (its cfg, fs, page_size, state, accessed and _had)."""

    status_of = staticmethod(move_pages_status)  # tests give a stand-in (the fixtures' pids are not real)

    def _build(self, targets, procs, memcgs, now_ns: int, entries: int, last=frozenset(),
               found_in: dict | None = None) -> H.HotnessData:
        """`last`: cells read for the last time (deleted from the map after this); those of
        processes or memcgs a target had at the previous read count in its accessed bytes.
        `found_in`: CellKey -> its pass-tagged finds (RegionHeat.found_in)."""
        cfg, page = self.cfg, self.page_size
        nodes = node_of_pfn(self.fs)
        residency_cache: dict[int, object] = {}
        notes = []
        out = []
        state = self.state
        # the memcg ids and tgids the cells have, once a cycle (C speed): a target that claims
        # all of them takes the state as it is, with no pass over the cells
        have_ids, have_tgids = set(map(itemgetter(1), state)), set(map(itemgetter(0), state))
        for t in targets:
            had_tgids, had_ids = self._had.get(t.name, (frozenset(), frozenset()))
            if t.kind == "memcg":
                ids = set(memcgs.get(t.name, ()))
                if have_ids <= ids:
                    claimed = state
                else:
                    claimed = {k: s for k, s in state.items()
                               if k.memcg_id in ids or (k in last and k.memcg_id in had_ids)}
            else:
                pids = set(procs.get(t.name, ()))
                if have_tgids <= pids:
                    claimed = state
                else:
                    claimed = {k: s for k, s in state.items()
                               if k.tgid in pids or (k in last and k.tgid in had_tgids)}
            acc = self.accessed.setdefault(t.name, Counter())
            for key, delta in zip(map(itemgetter(3, 4), claimed), map(itemgetter(2), claimed.values())):
                if delta:  # (node, lru), CellState.delta_pages
                    acc[key] += delta * page
            # cells read for the last time count above, but are not shown: their process is gone
            mine = {k: s for k, s in claimed.items() if k not in last} if last else claimed
            if t.kind == "memcg":
                by_tgid = Counter(map(itemgetter(0), mine))  # CellKey.tgid
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
                    residency_cache[tg] = read_residency(self.fs, tg, cfg.region_shift, page, nodes,
                                                          self.status_of)
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
            regions = self._regions(mine, resident, set(scan), now_ns, found_in)
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

    def _regions(self, mine: dict, resident: dict, scanned: set[int], now_ns: int,
                 found_in: dict | None = None) -> tuple[H.RegionHeat, ...]:
        """The snapshot's cells: one RegionHeat per counted cell (its pass-tagged finds from
        `found_in`), then one per resident cell never counted. One pass over the cells, each
        RegionHeat built by tuple.__new__ (65k a cycle)."""
        shift = self.cfg.region_shift
        new, inf = tuple.__new__, math.inf
        fi_get = (found_in or {}).get
        out = []
        seen = set()
        for k, s in mine.items():
            tgid, memcg_id, region, node, lru = k
            if tgid not in scanned:
                res = None
            elif resident:
                rk = (tgid, region, node, lru)
                seen.add(rk)
                res = resident.get(rk, 0)
            else:
                res = 0
            history, last = s.history, s.last_ns
            found = tuple([((now_ns - t) / 1e9 if t < now_ns else 0.0, n) for t, n in history[::-1]]) \
                if history else ()
            idle = inf if last <= 0 else ((now_ns - last) / 1e9 if last < now_ns else 0.0)
            out.append(new(H.RegionHeat, (tgid, memcg_id, region << shift, node, lru, res, s.delta_pages,
                                          s.total_pages, s.rate, idle, found, fi_get(k, ()))))
        memcg_of: dict = {}
        for rk, n in resident.items():
            if rk not in seen:
                if not memcg_of:  # a resident cell never counted: its process's memcg, from a counted one
                    for k in mine:
                        memcg_of.setdefault(k.tgid, k.memcg_id)
                tg, region, node, lru = rk
                out.append(H.RegionHeat(tg, memcg_of.get(tg, 0), region << shift, node, lru, n, 0, 0, 0.0,
                                        inf))
        out.sort(key=itemgetter(0, 2, 3, 4))  # tgid, start, node, lru
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
