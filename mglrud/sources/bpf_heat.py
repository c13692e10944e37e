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
import zlib
from collections import Counter

from mglrud.fs import FS
from mglrud.model import hotness as H
from mglrud.sources.smaps import is_shmem, parse_smaps

# A process whose mapped-and-resident address space is larger than this is not
# read through pagemap (8 bytes per 4 KiB page: 16 GiB -> 32 MiB read per cycle).
MAX_SCAN_BYTES = 16 << 30
# pagemap is read this much address space at a time (128 KiB of entries): what a read and its
# decode hold at once stays the same for a 1 GiB mapping and a 64 GiB one (the counts add up
# over the pieces, a region split between two of them included); also the unit ResidencyCache
# reads again between full reads
READ_BYTES = 64 << 20


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
    r = _read_full(fs, pid, region_shift, page_size, nodes, status_of)
    if r is None:
        return None
    spans, pieces, why, _ = r
    if pieces is None:
        return spans, None, why
    cells: Counter = Counter()
    for c in pieces.values():
        cells.update(c)
    return spans, dict(cells), ""


def _pieces(vmas):
    """(start, end, path, shmem) of each READ_BYTES piece of the mappings (from each one's start)."""
    for start, end, path in vmas:
        shmem = is_shmem(path)
        for lo in range(start, end, READ_BYTES):
            yield lo, min(end, lo + READ_BYTES), path, shmem


def _read_pieces(f, pid: int, pieces, region_shift: int, page_size: int, nodes, status_of,
                 crcs: dict | None = None, known: dict | None = None):
    """{piece: {(region, node, lru): pages}} of pagemap (open as f) over `pieces`; None if the
    process went away (move_pages: ESRCH). OSError from the read goes to the caller. `crcs`:
    filled with each piece's CRC-32 of its pagemap bytes; `known`: piece -> (CRC-32, cells) of
    an earlier read whose cells stand where the bytes are the same (no decode, no move_pages)."""
    out = {}
    node_of, only = nodes
    status = [status_of]  # refused once: the PFNs, for this and the next pieces
    for piece in pieces:
        lo, hi, path, shmem = piece
        f.seek(lo // page_size * 8)
        data = f.read((hi - lo) // page_size * 8)
        if crcs is not None:
            crc = crcs[piece] = zlib.crc32(data)
            if known and piece in known and known[piece][0] == crc:
                out[piece] = known[piece][1]
                continue
        vma = H.Vma(lo, hi, path, shmem)
        if only is not None:
            out[piece] = H.residency_one_node(vma, data, page_size, region_shift, only)
            continue
        if status[0] is not None:
            try:
                out[piece] = residency_move_pages(pid, vma, data, page_size, region_shift, status[0])
                continue
            except OSError as err:
                if err.errno in (errno.ESRCH, errno.ENOENT):
                    return None  # gone meanwhile
                status[0] = None
        out[piece] = H.residency(vma, data, page_size, region_shift, node_of)  # the bytes: no int per page
    return out


# A mapping with no resident page at the last full read is read again between full reads only up to
# this size (a larger one: a sparse reservation, a JVM heap's or a sanitizer's shadow, whose pagemap
# is 8 bytes a page of address space); a new mapping larger than this makes the next read a full one
EMPTY_READ_MAX = 1 << 30
_NOT_LRU_FLAGS = {"ht", "pf", "io"}  # hugetlb, PFN and I/O mappings: no Rss in smaps, not on an LRU
_NOT_READ_PATHS = ("[vsyscall]", "[vvar]", "[vvar_vclock]", "/anon_hugepage")


def _read_full(fs: FS, pid: int, region_shift: int, page_size: int, nodes, status_of, crcs=None):
    """read_residency() by pieces: (spans, {piece: cells} or None, why not, smaps entries) or None
    if the process is gone. `crcs`: as _read_pieces()."""
    try:
        entries = parse_smaps(fs.proc(pid, "smaps").read_text(errors="replace"))
    except (OSError, ValueError):
        return None
    vmas = [e for e in entries if e.rss > 0]
    spans = [(e.start, e.end) for e in vmas]
    if sum(e.end - e.start for e in vmas) > MAX_SCAN_BYTES:
        return spans, None, f"mapped resident space over {MAX_SCAN_BYTES >> 30} GiB; residency not read", entries
    try:
        with open(fs.proc(pid, "pagemap"), "rb") as f:
            pieces = _read_pieces(f, pid, _pieces((e.start, e.end, e.path) for e in vmas),
                                  region_shift, page_size, nodes, status_of, crcs)
    except OSError as e:
        return spans, None, f"cannot read pagemap: {e.strerror}", entries
    if pieces is None:
        return None
    return spans, pieces, "", entries


def process_signature(fs: FS, pid: int):
    """(start time, VM size, resident, shared) of a process from /proc/PID/stat and statm: O(1)
    reads, no page walk (the kernel's RSS counters); None when either cannot be read."""
    try:
        stat = fs.proc(pid, "stat").read_text(errors="replace")
        statm = fs.proc(pid, "statm").read_text(errors="replace")
        start = int(stat.rpartition(")")[2].split()[19])  # field 22, starttime
        size, resident, shared = (int(x) for x in statm.split()[:3])
    except (OSError, ValueError, IndexError):
        return None
    return start, size, resident, shared


# Between full reads, a process whose counters moved has its pieces read again, the oldest first, at
# least ROLL_MIN_BYTES of address space or 1/ROLL_ROUNDS of it a cycle, whichever is more: what it had
# when they moved is read again within ROLL_ROUNDS cycles
ROLL_ROUNDS = 6
ROLL_MIN_BYTES = 128 << 20


def parse_maps(text: str) -> list[tuple[int, int, str]]:
    """/proc/PID/maps -> (start, end, path) per mapping, the path as parse_smaps() has it
    (smaps' mapping lines are maps' lines). ValueError on a line that is not one."""
    out = []
    for line in text.splitlines():
        if not line:
            continue
        w = line.split(None, 5)
        lo, sep, hi = w[0].partition("-")
        if not sep or len(w) < 5:
            raise ValueError(f"not a maps line: {line!r}")
        out.append((int(lo, 16), int(hi, 16), w[5].rstrip(" ") if len(w) > 5 else ""))
    return out


def _readable(entries) -> dict:
    """(start, end, path) -> 2: resident at the smaps read; 1: empty then but read between smaps
    reads (small, on an LRU); 0: not read between smaps reads. (In ResidencyCache: 3, mapped
    since; 4, resident at an earlier read, its span now from pagemap.)"""
    out = {}
    for e in entries:
        empty_ok = e.end - e.start <= EMPTY_READ_MAX and not _NOT_LRU_FLAGS & set(e.vmflags) \
            and not e.path.startswith(_NOT_READ_PATHS)
        out[(e.start, e.end, e.path)] = 2 if e.rss > 0 else int(empty_ok)
    return out


class _Process:
    __slots__ = ("sig", "full_at", "readable", "pieces", "total", "dirty", "forced", "result")

    def __init__(self, sig, full_at, readable, pieces, crcs, seq):
        self.sig, self.full_at, self.readable = sig, full_at, readable
        # piece -> (cells, cycle read, CRC-32 of its pagemap bytes)
        self.pieces = {p: (c, seq, crcs[p]) for p, c in pieces.items()}
        # pieces read (decoded) before this cycle are decoded again even if their bytes are the
        # same: at max age (pages migrated between nodes leave pagemap's bytes as they were when
        # the PFNs are hidden)
        self.forced = seq
        self.total: Counter = Counter()
        for c in pieces.values():
            self.total.update(c)
        self.dirty = 0  # the cycle its counters last moved: pieces read before it are stale
        self.result = None


class ResidencyCache:
    """read_residency() that reads only what may have changed (bpf.residency_max_age > 0).

    Per process: a full read (smaps, then pagemap of every mapping with resident pages, as
    read_residency()) when the process is new to it, or another one has its pid (start time).
    Then each cycle /proc/PID/stat and statm (the kernel's RSS counters; O(1), no page walk):
    unchanged, the last result stands; moved, the mapping list comes from /proc/PID/maps (no page
    walk) and pagemap is read again for new mappings and, oldest first, for the pieces
    (READ_BYTES) read before the counters moved: at least 1/ROLL_ROUNDS of the process's address
    space a cycle (ROLL_MIN_BYTES at least), so all of it within ROLL_ROUNDS cycles. Every
    `max_age` seconds every piece becomes due again the same way, whatever the counters say: what
    they did not show (pages migrated between nodes, as many faulted in as dropped, counter
    slack) is read within max_age + ROLL_ROUNDS cycles. Mappings empty at the last smaps read are
    read between smaps reads only when small (EMPTY_READ_MAX) and not hugetlb, PFN or I/O
    mappings; smaps is read again at max age only for a process that has a larger one (which
    mappings hold pages is otherwise what pagemap says); a new mapping larger than that, or over
    MAX_SCAN_BYTES in all, makes the read a full one. A piece read again whose pagemap bytes
    are those of its last read (CRC-32) keeps its cells, without a decode or move_pages(2),
    except in the round after max age. Where stat or statm cannot be read, every cycle is a
    full read, as with max_age 0."""

    def __init__(self, max_age: float):
        self.max_age = max_age
        self.key = None  # the owner's: what the cached cells depend on (max age, region shift, page size)
        self.procs: dict[int, _Process] = {}
        self.seq = 0  # cycles seen (begin())
        self.full_reads = self.piece_reads = 0  # smaps reads, pieces read between them (bench, tests)
        self.maps_refreshes = 0  # max-age refreshes without smaps

    def begin(self) -> None:
        """A new cycle: pieces read from here on are newer than the counters seen so far."""
        self.seq += 1

    def keep(self, pids) -> None:
        """Forget every process but these (those read this cycle)."""
        for pid in set(self.procs) - set(pids):
            del self.procs[pid]

    def read(self, fs: FS, pid: int, region_shift: int, page_size: int, nodes, now: float,
             status_of=move_pages_status):
        """read_residency()'s answer for pid, at `now` (seconds, monotonic)."""
        if self.max_age <= 0:
            return read_residency(fs, pid, region_shift, page_size, nodes, status_of)
        sig = process_signature(fs, pid)
        if sig is None:  # no counters to go by: read in full, every cycle
            self.procs.pop(pid, None)
            return read_residency(fs, pid, region_shift, page_size, nodes, status_of)
        p = self.procs.get(pid)
        if p is None or p.sig[0] != sig[0]:
            return self._full(fs, pid, region_shift, page_size, nodes, now, status_of, sig)
        if now - p.full_at >= self.max_age and not any(
                ok == 0 and e - s_ > EMPTY_READ_MAX for (s_, e, _), ok in p.readable.items()):
            # every piece read again from here on; the mappings from maps: with no large mapping
            # left unread, pagemap says all smaps would (which ones hold pages)
            p.sig, p.dirty, p.forced, p.full_at = sig, self.seq, self.seq, now
            p.readable = {k: 4 if ok == 2 else ok for k, ok in p.readable.items()}
            self.maps_refreshes += 1
            return self._roll(fs, pid, region_shift, page_size, nodes, now, status_of, p)
        if now - p.full_at >= self.max_age:  # smaps again, and every piece read again from here on
            try:
                entries = parse_smaps(fs.proc(pid, "smaps").read_text(errors="replace"))
            except (OSError, ValueError):
                self.procs.pop(pid, None)
                return None
            self.full_reads += 1
            p.sig, p.dirty, p.forced, p.full_at, p.readable = sig, self.seq, self.seq, now, _readable(entries)
            return self._roll(fs, pid, region_shift, page_size, nodes, now, status_of, p, entries)
        if sig != p.sig:
            p.sig, p.dirty = sig, self.seq
        elif not any(v[1] < p.dirty for v in p.pieces.values()):
            return p.result  # nothing moved, nothing left to read again
        return self._roll(fs, pid, region_shift, page_size, nodes, now, status_of, p)

    def _full(self, fs, pid, region_shift, page_size, nodes, now, status_of, sig):
        self.procs.pop(pid, None)
        crcs: dict = {}
        r = _read_full(fs, pid, region_shift, page_size, nodes, status_of, crcs)
        self.full_reads += 1
        if r is None:
            return None
        spans, pieces, why, entries = r
        if pieces is None:
            return spans, None, why  # read in full again next cycle
        p = _Process(sig, now, _readable(entries), pieces, crcs, self.seq)
        p.result = spans, dict(p.total), ""
        self.procs[pid] = p
        return p.result

    def _roll(self, fs, pid, region_shift, page_size, nodes, now, status_of, p: _Process, maps=None):
        """Read pagemap again where it is due: new mappings, then the stale pieces, oldest first.
        `maps`: smaps' entries just read (at max age), else /proc/PID/maps is read."""
        if maps is None:
            try:
                maps = parse_maps(fs.proc(pid, "maps").read_text(errors="replace"))
            except (OSError, ValueError):
                self.procs.pop(pid, None)
                return None
        else:
            maps = [(e.start, e.end, e.path) for e in maps]
        p.readable = {k: p.readable[k] for k in maps if k in p.readable}  # not the unmapped ones
        vmas = []
        for key in maps:
            start, end, path = key
            ok = p.readable.get(key)
            if ok is None:  # new since the full read
                if path.startswith(_NOT_READ_PATHS):
                    continue
                if end - start > EMPTY_READ_MAX:
                    return self._full(fs, pid, region_shift, page_size, nodes, now, status_of, p.sig)
                ok = p.readable[key] = 3
            if ok:
                vmas.append((key, ok))
        if sum(k[1] - k[0] for k, _ in vmas) > MAX_SCAN_BYTES:  # without the ones empty at the full read
            vmas = [(k, ok) for k, ok in vmas if ok != 1]
        vmas = [k for k, _ in vmas]
        if sum(e - s for s, e, _ in vmas) > MAX_SCAN_BYTES:
            return self._full(fs, pid, region_shift, page_size, nodes, now, status_of, p.sig)
        pieces, owner = [], []  # owner: the index in vmas of each piece's mapping
        for i, vma in enumerate(vmas):
            for k in _pieces((vma,)):
                pieces.append(k)
                owner.append(i)
        here = set(pieces)
        for k in [k for k in p.pieces if k not in here]:  # unmapped since
            p.total.subtract(p.pieces.pop(k)[0])
        new = [k for k in pieces if k not in p.pieces]
        stale = sorted((k for k in pieces if k in p.pieces and p.pieces[k][1] < p.dirty),
                       key=lambda k: (p.pieces[k][1], k[0]))
        budget = max(ROLL_MIN_BYTES, -(-sum(e - s for s, e, _ in vmas) // ROLL_ROUNDS))
        todo, used = list(new), 0  # new mappings on top: a process mapping more every cycle must
        for k in stale:  # not hold the others back past ROLL_ROUNDS cycles
            if used >= budget:
                break
            todo.append(k)
            used += k[1] - k[0]
        try:
            with open(fs.proc(pid, "pagemap"), "rb") as f:
                crcs: dict = {}
                known = {k: (p.pieces[k][2], p.pieces[k][0]) for k in todo
                         if k in p.pieces and p.pieces[k][1] >= p.forced}
                got = _read_pieces(f, pid, todo, region_shift, page_size, nodes, status_of, crcs, known)
        except OSError:
            return self._full(fs, pid, region_shift, page_size, nodes, now, status_of, p.sig)
        if got is None:
            self.procs.pop(pid, None)
            return None
        self.piece_reads += len(todo)
        for k, c in got.items():
            if k in p.pieces:
                p.total.subtract(p.pieces[k][0])
            p.pieces[k] = (c, self.seq, crcs[k])
            p.total.update(c)
        total = {k: v for k, v in p.total.items() if v > 0}
        p.total = Counter(total)
        # spans: the mappings resident at the full read (one that lost every page since stays until
        # the next full read) and those whose pages pagemap shows now
        holds = {i for k, i in zip(pieces, owner) if p.pieces[k][0]}
        spans = [(s, e) for i, (s, e, path) in enumerate(vmas) if i in holds or p.readable[(s, e, path)] == 2]
        p.result = spans, total, ""
        return p.result


class HeatBuilder:
    """Per-target assembly for BpfHotnessSource (its cfg, fs, page_size, state, accessed and _had)."""

    status_of = staticmethod(move_pages_status)  # tests give a stand-in (the fixtures' pids are not real)

    def _build(self, targets, procs, memcgs, now_ns: int, entries: int, last=None,
               with_passes: bool = False) -> H.HotnessData:
        """From the per-cell columns (self.cols, model/heat_columns.py), each target's heat.
        `last`: a mask of the cells read for the last time (deleted from the map after this);
        those of processes or memcgs a target had at the previous read count in its accessed
        bytes. `with_passes`: the regions carry their pass-tagged finds (RegionHeat.found_in).
        Per-target sums are numpy's; the only per-cell objects made are the snapshot's RegionHeats."""
        import numpy as np

        from mglrud.sources.bpf_hotness import isin

        cfg, page = self.cfg, self.page_size
        nodes = node_of_pfn(self.fs)
        residency_cache: dict[int, object] = {}
        # what was read before: re-read only what may have changed (bpf.residency_max_age)
        rc = getattr(self, "residency", None)
        if rc is None or rc.key != (cfg.residency_max_age, cfg.region_shift, page):
            rc = self.residency = ResidencyCache(cfg.residency_max_age)
            rc.key = (cfg.residency_max_age, cfg.region_shift, page)
        rc.begin()
        notes = []
        out = []
        st = self.cols
        c = st.cells
        n = len(c)
        if last is None or not last.any():
            last = None
        # the memcg ids and tgids the cells have, once a cycle (C speed): a target that claims
        # all of them takes every cell, with no pass over the cells
        have_ids, have_tgids = set(np.unique(c.memcg_id).tolist()), set(np.unique(c.tgid).tolist())
        every = np.ones(n, bool)
        for t in targets:
            had_tgids, had_ids = self._had.get(t.name, (frozenset(), frozenset()))
            if t.kind == "memcg":
                ids = set(memcgs.get(t.name, ()))
                if have_ids <= ids:
                    claimed = every
                else:
                    claimed = isin(c.memcg_id, ids)
                    if last is not None and had_ids:
                        claimed |= last & isin(c.memcg_id, had_ids)
            else:
                pids = set(procs.get(t.name, ()))
                if have_tgids <= pids:
                    claimed = every
                else:
                    claimed = isin(c.tgid, pids)
                    if last is not None and had_tgids:
                        claimed |= last & isin(c.tgid, had_tgids)
            acc = self.accessed.setdefault(t.name, Counter())
            found = claimed & (st.delta != 0)
            if found.any():  # (node, lru) -> bytes, CellState.delta_pages summed per pair
                pair = c.node[found] * np.uint64(len(H.LRU_NAMES)) + c.lru[found]
                pairs, inv = np.unique(pair, return_inverse=True)
                sums = np.zeros(len(pairs), np.int64)
                np.add.at(sums, inv, st.delta[found])
                for p, v in zip(pairs.tolist(), sums.tolist()):
                    acc[(p // len(H.LRU_NAMES), H.LRU_NAMES[p % len(H.LRU_NAMES)])] += v * page
            # cells read for the last time count above, but are not shown: their process is gone
            mine = claimed & ~last if last is not None else claimed
            rows = np.flatnonzero(mine)
            tg = c.tgid[rows]
            if t.kind == "memcg":
                # by_tgid.most_common(): the most cells first, ties in order of first appearance
                uniq, first, count = np.unique(tg, return_index=True, return_counts=True)
                order = np.lexsort((first, -count))
                scan = [x for x in uniq[order][:cfg.max_processes].tolist() if x]
            else:
                ids = set(np.unique(c.memcg_id[rows]).tolist())
                scan = sorted(pids)[: cfg.max_processes]
                if len(pids) > cfg.max_processes:
                    notes.append(f"target {t.name}: {len(pids)} processes; residency read for "
                                 f"{cfg.max_processes} (bpf.max_processes)")
            spans_in, resident = [], {}
            for tg_ in scan:
                if tg_ not in residency_cache:
                    residency_cache[tg_] = rc.read(self.fs, tg_, cfg.region_shift, page, nodes,
                                                   now_ns / 1e9, self.status_of)
                r = residency_cache[tg_]
                if r is None:
                    continue
                spans, cells, why = r
                spans_in += [(tg_, s, e) for s, e in spans]
                if cells is None:
                    notes.append(f"process {tg_}: {why}")
                    continue
                for (region, node, lru), npages in cells.items():
                    resident[(tg_, region, node, lru)] = npages
            regions = self._regions(rows, resident, set(scan), now_ns, with_passes)
            buckets = ()
            if t.kind != "memcg":
                buckets = self._buckets(spans_in, rows)
            out.append(H.TargetHeat(
                name=t.name, kind=t.kind, tgids=tuple(scan), memcg_ids=tuple(sorted(ids)),
                regions=regions, buckets=buckets,
                accessed_bytes_total=tuple(sorted((n, l, b) for (n, l), b in acc.items()))))
        for name in set(self.accessed) - {t.name for t in targets}:
            del self.accessed[name]
        rc.keep(residency_cache)
        events, matched, dropped = self.stats
        return H.HotnessData(region_size=cfg.region_size, half_life=cfg.half_life, page_size=page,
                             targets=tuple(out), events=events, matched=matched, dropped=dropped,
                             map_entries=entries, map_capacity=cfg.max_regions, notes=tuple(dict.fromkeys(notes)),
                             event=getattr(self.program, "event", ""))

    def _regions(self, rows, resident: dict, scanned: set[int], now_ns: int,
                 with_passes: bool = False):
        """The snapshot's cells: one RegionHeat per counted cell (rows of self.cols, in their
        order; its pass-tagged finds when `with_passes`), then one per resident cell never
        counted, sorted by (tgid, start, node, lru) (a stable sort: a cell of a process that
        changed memcgs keeps its place). As heat_columns.RegionColumns: columns computed at C
        speed, RegionHeat objects made only when someone iterates."""
        import numpy as np

        from mglrud.model import heat_columns as C

        shift = self.cfg.region_shift
        inf = math.inf
        st = self.cols
        c = st.cells
        n = len(rows)
        tgid, memcg_id, region, node, lru = (a[rows] for a in (c.tgid, c.memcg_id, c.region, c.node, c.lru))
        # resident pages: None where the process's residency was not read, else pagemap's count
        in_scan = np.isin(tgid, np.fromiter(scanned, dtype=np.uint64, count=len(scanned)))
        res_rows = np.zeros(0, np.int64)
        if resident:
            keys = list(resident)
            r_tgid, r_region, r_node = (np.fromiter((k[i] for k in keys), dtype=np.uint64, count=len(keys))
                                        for i in range(3))
            r_lru = np.fromiter((H.LRU_NAMES.index(k[3]) for k in keys), dtype=np.uint64, count=len(keys))
            r_pages = np.fromiter(resident.values(), dtype=np.int64, count=len(keys))
            m = C.match(r_region, C.key_word(r_tgid, np.zeros(len(keys), np.uint64), r_node, r_lru),
                        region, C.key_word(tgid, np.zeros(n, np.uint64), node, lru))
            res = np.where(m >= 0, r_pages[np.where(m >= 0, m, 0)], 0)
            seen = np.zeros(len(keys), bool)
            seen[m[in_scan & (m >= 0)]] = True
            res_rows = np.flatnonzero(~seen)  # resident cells never counted, in residency's order
        else:
            res = np.zeros(n, np.int64)
        res = np.where(in_scan, res, -1)  # -1: residency not read (RegionHeat.resident_pages None)
        last = st.last_ns[rows]
        idle = np.where(last <= 0, inf, np.where(last < now_ns, (now_ns - last) / 1e9, 0.0))
        cols = {"tgid": tgid, "memcg_id": memcg_id, "start": region << np.uint64(shift), "node": node, "lru": lru,
                "res": res, "delta": st.delta[rows], "total": st.total[rows], "rate": st.rate[rows], "idle": idle}
        src_row = rows
        if len(res_rows):
            # resident cells never counted: their process's memcg from its first counted cell (else 0)
            memcg_of: dict = {}
            for tg, mid in zip(tgid.tolist(), memcg_id.tolist()):
                memcg_of.setdefault(tg, mid)
            r_t = r_tgid[res_rows]
            k = len(res_rows)
            extra = {"tgid": r_t, "memcg_id": np.fromiter((memcg_of.get(x, 0) for x in r_t.tolist()), np.uint64, k),
                     "start": r_region[res_rows] << np.uint64(shift), "node": r_node[res_rows], "lru": r_lru[res_rows],
                     "res": r_pages[res_rows], "delta": np.zeros(k, np.int64), "total": np.zeros(k, np.int64),
                     "rate": np.zeros(k), "idle": np.full(k, inf)}
            cols = {name: np.concatenate((a, extra[name])) for name, a in cols.items()}
            src_row = np.concatenate((rows, np.full(k, -1, np.int64)))
        order = np.lexsort((cols["lru"], cols["node"], cols["start"], cols["tgid"]))  # stable, as list.sort
        return C.RegionColumns({name: a[order] for name, a in cols.items()}, st, src_row[order], now_ns, with_passes)

    def _buckets(self, spans_in, rows) -> tuple[H.HeatBucket, ...]:
        import numpy as np

        cfg, page = self.cfg, self.page_size
        st = self.cols
        spans = H.collapsed_spans(spans_in)
        # per (tgid, region): rate and latest finds summed over its nodes and lrus, in the cells'
        # order, and the dict in order of first appearance (address_histogram adds in that order)
        tg, rg = st.cells.tgid[rows], st.cells.region[rows]
        rate, latest = {}, {}
        if len(rows):
            order = np.lexsort((np.arange(len(rows)), rg, tg))
            t_s, r_s = tg[order], rg[order]
            newkey = np.ones(len(rows), bool)
            newkey[1:] = (t_s[1:] != t_s[:-1]) | (r_s[1:] != r_s[:-1])
            group = np.cumsum(newkey) - 1
            inv = np.empty(len(rows), np.int64)
            inv[order] = group
            ngroups = int(group[-1]) + 1
            rsum = np.zeros(ngroups, np.float64)
            np.add.at(rsum, inv, st.rate[rows] * page)  # in the cells' order: the same float sums
            lsum = np.zeros(ngroups, np.int64)
            np.add.at(lsum, inv, st.delta[rows] * page)
            first = np.full(ngroups, len(rows), np.int64)
            np.minimum.at(first, inv, np.arange(len(rows)))
            for g in np.argsort(first, kind="stable").tolist():
                i = int(first[g])
                key = (int(tg[i]), int(rg[i]))
                rate[key], latest[key] = float(rsum[g]), int(lsum[g])
        heat = H.address_histogram(spans, rate, cfg.region_shift, cfg.heat_buckets)
        acc = H.address_histogram(spans, latest, cfg.region_shift, cfg.heat_buckets)
        ranges = H.bucket_ranges(spans, cfg.heat_buckets)
        return tuple(H.HeatBucket(tuple(r), h, round(a)) for r, h, a in zip(ranges, heat, acc))
