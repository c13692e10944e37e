"""Per-region access heat from the BPF source (sources/bpf_hotness.py): the data and the pure math.

The kernel side (bpf/hotness.bpf.c on mglrud's tracepoint vmscan:mm_vmscan_lru_gen_young,
Documentation/admin-guide/mm/multigen_lru.rst) keeps, per cell = (tgid, memcg id,
region, node, lru), a cumulative count of young page-table entries the aging walks
found, and the CLOCK_MONOTONIC time of the latest one. Everything else is
computed here, in user space, from consecutive reads of those counters:

- deltas: pages found accessed since the previous read (the map is never reset);
- an exponentially weighted access frequency (pages per second) with a
  configurable half-life: each page found accessed adds ln2/half_life, and the
  estimate decays by 2^(-dt/half_life), so a steady rate r reads r;
- idle age: time since the aging pass that last found the cell accessed. Like
  model/lru_gen.py's generation bound it is a lower bound that errs by up to one aging
  interval (an access is only seen at the next aging);
- residency from /proc/PID/pagemap, per region, node and lru, so that resident
  regions never found accessed since mglrud started show up (idle age +Inf);
- the address-offset histogram: a fixed number of buckets over a process's
  mapped address space with the holes between mappings collapsed.

All functions below are pure, so unit tests run them on map dumps captured in
the VM (tests/fixtures/bpf/).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from collections.abc import Sequence  # noqa: F401 (TargetHeat.regions)
from typing import NamedTuple

from mglrud.model.histogram import cumulative
# residency is its own module; the BPF source and its tests reach it as H.residency & co.
from mglrud.model.residency import (NODE_BYTES_MAX, PM_FILE, PM_PFN_MASK, PM_PRESENT, Vma,  # noqa: F401
                                   parse_zoneinfo, pfn_node_table, residency, residency_by_status,
                                   residency_one_node, residency_per_page)

LRU_NAMES = ("anon", "file")  # the program's key.lru: 0 anon, 1 file (folio_is_file_lru())
LN2 = math.log(2)


# ---------------------------------------------------------------- raw reads

# CellKey, Counts and CellState are NamedTuples, immutable like the dataclasses: there is one
# of each per map cell per cycle (65k cells: 200k objects a cycle), and a NamedTuple is built
# and hashed at C speed where a frozen dataclass runs Python for both.
class CellKey(NamedTuple):
    tgid: int
    memcg_id: int
    region: int  # address >> region_shift
    node: int
    lru: str  # "anon" | "file"


class Counts(NamedTuple):
    pages: int  # young entries found, in base pages, summed over CPUs
    events: int
    last_ns: int  # CLOCK_MONOTONIC ns of the latest, max over CPUs (0: never)


@dataclass(frozen=True)
class RawRead:
    """One read of the program's maps, per-CPU values already combined."""

    mono_ns: int  # CLOCK_MONOTONIC when read
    cells: dict  # CellKey -> Counts
    events: int  # every event the program saw
    matched: int  # events of a target
    dropped: int  # events of a target lost to a full map
    # base pages of targets found young, by who cleared the accessed bit ({"aging": n, ...},
    # summed over CPUs; docs/stock-kernel.md)
    harvest: dict = field(default_factory=dict)


def combine_percpu(per_cpu: list[tuple[int, int, int]]) -> Counts:
    """Per-CPU (pages, events, last_ns) values of one key -> one Counts."""
    return Counts(sum(p for p, _, _ in per_cpu), sum(e for _, e, _ in per_cpu),
                  max((t for _, _, t in per_cpu), default=0))


def raw_from_dump(dump: dict) -> RawRead:
    """The JSON form bpf_hotness.dump() writes (and tests/fixtures/bpf/ holds) -> RawRead."""
    cells = {}
    for e in dump["heat"]:
        key = CellKey(e["tgid"], e["memcg_id"], e["region"], e["node"], LRU_NAMES[e["lru"]])
        pc = e["percpu"]
        # Program.dump() combines the CPUs already (one entry); captured dumps may hold each CPU's
        cells[key] = Counts(*pc[0]) if len(pc) == 1 else combine_percpu([tuple(v) for v in pc])
    s = dump["stats"]
    return RawRead(dump["mono_ns"], cells, sum(s["events"]), sum(s["matched"]), sum(s["dropped"]),
                   {n: sum(v) for n, v in dump.get("harvest", {}).items()})


# ---------------------------------------------------------------- per-cell state

class CellState(NamedTuple):
    seen_pages: int  # the map's cumulative count at the previous read
    total_pages: int  # user-space cumulative of deltas (survives map resets)
    delta_pages: int  # found accessed since the previous read
    rate: float  # EWMA pages per second
    last_ns: int  # CLOCK_MONOTONIC ns of the latest access found; 0 never
    updated_ns: int
    # (last_ns, pages) of the latest HISTORY reads that found the cell accessed, oldest
    # first: with one aging per read, the pages each aging pass found
    history: tuple[tuple[int, int], ...] = ()


HISTORY = 16


def step(prev: dict, raw: RawRead, half_life: float) -> dict:
    """New per-cell state from the previous one and a read. Cells missing from the
    read (deleted from the map) are dropped; a count lower than before means the
    key was deleted and re-created, so the whole count is new.

    One pass, one CellState per cell built by tuple.__new__ (65k cells a cycle): the decay
    factor is computed once per previous read time (all cells of the previous read share it),
    not once per cell."""
    out = {}
    k = LN2 / half_life
    now = raw.mono_ns
    get = prev.get
    new = tuple.__new__
    decays: dict = {}
    for key, (pages, _, last_ns) in raw.cells.items():
        p = get(key)
        if p is None:
            # First sight: what the map holds happened before this read, but we
            # do not know over what time; count it as found now.
            out[key] = new(CellState, (pages, pages, pages, pages * k, last_ns, now,
                                       ((last_ns, pages),) if pages else ()))
            continue
        seen, total, _, rate, prev_last, updated, history = p
        delta = pages - seen if pages >= seen else pages
        decay = decays.get(updated)
        if decay is None:
            decay = decays[updated] = 2.0 ** (-max(0.0, (now - updated) / 1e9) / half_life)
        if delta:
            history = history + ((last_ns, delta),) if len(history) < HISTORY else \
                (history + ((last_ns, delta),))[-HISTORY:]
            out[key] = new(CellState, (pages, total + delta, delta, rate * decay + delta * k, last_ns, now, history))
        else:
            out[key] = new(CellState, (pages, total, 0, rate * decay,
                                       last_ns if last_ns > prev_last else prev_last, now, history))
    return out


def idle_seconds(state: CellState, now_ns: int) -> float:
    return math.inf if state.last_ns <= 0 else max(0.0, (now_ns - state.last_ns) / 1e9)


# ---------------------------------------------------------------- address-offset histogram

def collapsed_spans(vmas: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(tgid, start, end) mapped ranges -> (tgid, start, end, offset in the collapsed space):
    per process sorted and merged, processes one after the other in tgid order."""
    merged: list[list[int]] = []
    for t, s, e in sorted(vmas):
        if merged and merged[-1][0] == t and s <= merged[-1][2]:
            merged[-1][2] = max(merged[-1][2], e)
        else:
            merged.append([t, s, e])
    out, off = [], 0
    for t, s, e in merged:
        out.append((t, s, e, off))
        off += e - s
    return out


def _total(spans) -> int:
    return spans[-1][2] - spans[-1][1] + spans[-1][3] if spans else 0


def bucket_ranges(spans, nbuckets: int) -> list[list[tuple[int, int, int]]]:
    """For each bucket, the (tgid, start, end) ranges it covers; buckets split the collapsed space evenly."""
    total = _total(spans)
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(nbuckets)]
    if not total:
        return out
    for b in range(nbuckets):
        lo, hi = total * b // nbuckets, total * (b + 1) // nbuckets
        for t, s, e, off in spans:
            a, z = max(lo, off), min(hi, off + e - s)
            if a < z:
                out[b].append((t, s + a - off, s + z - off))
    return out


def address_histogram(spans, heat: dict[tuple[int, int], float], region_shift: int,
                      nbuckets: int) -> list[float]:
    """Per-region values {(tgid, region): value} spread evenly over the region's mapped
    bytes and summed per bucket of the collapsed space. A region no longer mapped is not shown."""
    out = [0.0] * nbuckets
    total = _total(spans)
    if not total:
        return out
    index = {}
    for i, (t, s, _, _) in enumerate(spans):
        index.setdefault(t, []).append((s, i))
    for (tgid, region), value in heat.items():
        if not value or tgid not in index:
            continue
        lo, hi = region << region_shift, (region + 1) << region_shift
        starts = index[tgid]
        j = max(0, bisect.bisect_right(starts, (lo, len(spans))) - 1)
        pieces = []
        while j < len(starts) and starts[j][0] < hi:
            _, s, e, off = spans[starts[j][1]]
            a, z = max(lo, s), min(hi, e)
            if a < z:
                pieces.append((a - s + off, z - s + off))
            j += 1
        mapped = sum(z - a for a, z in pieces)
        if not mapped:
            continue
        density = value / mapped
        for a, z in pieces:
            b = a * nbuckets // total
            while b < nbuckets:
                blo, bhi = total * b // nbuckets, total * (b + 1) // nbuckets
                if blo >= z:
                    break
                out[b] += density * max(0, min(z, bhi) - max(a, blo))
                b += 1
    return out


def bucket_edges(nbuckets: int) -> list[float]:
    """`le` of each bucket but the last (whose edge is +Inf): fractions of the collapsed space."""
    return [(b + 1) / nbuckets for b in range(nbuckets - 1)]


# ---------------------------------------------------------------- idle ages at region precision

class RegionHeat(NamedTuple):
    """One (process, region, node, lru) cell as the snapshot carries it (a NamedTuple for the
    reason CellKey is one: one per cell per cycle)."""

    tgid: int
    memcg_id: int
    start: int  # region start address
    node: int
    lru: str
    resident_pages: int | None  # None: residency not read for this process
    accessed_pages: int  # found accessed since the previous read (cycle)
    accessed_pages_total: int  # since mglrud started
    rate: float  # EWMA pages per second
    idle_seconds: float  # inf: resident but never found accessed since start
    # (seconds ago, pages) of each recent aging pass that found the cell accessed, newest first
    found: tuple[tuple[float, int], ...] = ()
    # (pass seq, pages) of the same finds where the read followed a pass of the cell's memcg
    # (AgingPass.seq), newest first: what heat per aging pass is computed from
    found_in: tuple[tuple[int, int], ...] = ()


def region_bytes(r: RegionHeat, page_size: int) -> int:
    """Bytes a region cell stands for in the idle-age figures: its resident pages
    when pagemap was read, else none (it is not counted)."""
    return (r.resident_pages or 0) * page_size


def warm_pages(r: RegionHeat, within: float, inclusive: bool = True) -> int:
    """Resident pages of a cell taken as accessed within `within` seconds: the most
    pages any one aging pass in that window found (a lower bound on the distinct
    pages: the same page found by two passes counts once), capped at its residency.

    Counting pages rather than whole regions keeps a region with a few hot pages
    from counting as entirely warm; the tracepoint reports every page."""
    if not r.resident_pages:
        return 0
    found = [n for age, n in r.found if (age <= within if inclusive else age < within)]
    return min(r.resident_pages, max(found, default=0))


def idle_histogram(regions, edges: tuple[float, ...], page_size: int) -> tuple[list[tuple[float, int]], float]:
    """Cumulative resident bytes per idle-age edge (then +Inf), and the sum of byte-seconds
    of the bytes with a known finite idle age. Per cell, the bytes idle at most `le` are
    warm_pages(le); the rest of its resident bytes (never found, or beyond the history
    kept) are only in +Inf."""
    points = []
    for r in regions:
        seen = 0
        for age, _ in sorted(r.found):
            w = warm_pages(r, age)
            points.append((age, (w - seen) * page_size))  # warm_pages grows with age: w >= seen
            seen = max(seen, w)
        points.append((math.inf, region_bytes(r, page_size) - seen * page_size))
    return cumulative(points, edges)


def cold_bytes(regions, threshold: float, page_size: int) -> int:
    """Resident bytes not found accessed for at least `threshold` seconds: per cell its
    resident pages minus warm_pages() within the threshold (a never-accessed cell: all)."""
    return sum((r.resident_pages or 0) - warm_pages(r, threshold, inclusive=False) for r in regions) * page_size


# ---------------------------------------------------------------- aging passes

@dataclass(frozen=True)
class AgingPass:
    """One aging pass of a memcg, seen as its max_seq moving between two reads of the maps
    (by mglrud's aging or the kernel's own). Heat is defined per pass: the pages the reads
    after it found accessed, over the time since the memcg's previous pass."""

    memcg_id: int
    seq: int  # the memcg's max_seq after the pass (the largest over its nodes; lru_gen)
    at: float  # wall time the pass created its generation (the youngest generation's birth)
    # False for the first pass seen of a memcg: what it found accumulated since an unknown
    # earlier walk (for a new process, since it started), not over one aging interval
    measured: bool


def passes_seen(prev: dict, lruvecs, wall_now: float) -> tuple[dict, dict]:
    """(new per-memcg state {memcg_id: (path, max_seq, at, passes seen)}, {memcg_id: AgingPass}
    of the memcgs whose max_seq moved since `prev`) from one lru_gen read (GenHistograms,
    ages relative to about `wall_now`). The first read of a memcg is a baseline, not a pass;
    a memcg id now on another path is a new memcg (the kernel reuses ids)."""
    now: dict = {}
    for h in lruvecs:
        if not h.generations:
            continue
        seq, at = h.max_seq, wall_now - h.generations[-1].age_seconds
        old = now.get(h.memcg_id)
        if old is not None:  # one memcg on several nodes: its newest generation
            seq, at = max(old[1], seq), max(old[2], at)
        now[h.memcg_id] = (h.memcg_path, seq, at)
    state, moved = {}, {}
    for mid, (path, seq, at) in now.items():
        p = prev.get(mid)
        if p is None or p[0] != path:
            state[mid] = (path, seq, at, 0)
        elif seq > p[1]:
            # measured from the second pass seen on: the first ends an interval of unknown start
            moved[mid] = AgingPass(mid, seq, at, measured=p[3] >= 1)
            state[mid] = (path, seq, at, p[3] + 1)
        else:
            state[mid] = p
    return state, moved


# ---------------------------------------------------------------- the snapshot's part

@dataclass(frozen=True)
class HeatBucket:
    ranges: tuple[tuple[int, int, int], ...]  # (tgid, start, end) address ranges, collapsed order
    heat: float  # EWMA bytes per second found accessed
    accessed_bytes: int  # found accessed in the latest cycle


@dataclass(frozen=True)
class TargetHeat:
    name: str
    kind: str  # the selector kind: memcg, pid, comm, cmdline, unit
    tgids: tuple[int, ...]  # processes read for residency / the address histogram
    memcg_ids: tuple[int, ...]
    # RegionHeats; from the BPF source a heat_columns.RegionColumns (a Sequence of them kept as
    # columns, which collectors/bpf.py reads without making the objects)
    regions: "tuple[RegionHeat, ...] | Sequence[RegionHeat]"
    buckets: tuple[HeatBucket, ...] = ()  # process targets only
    accessed_bytes_total: tuple[tuple[int, str, int], ...] = ()  # (node, lru, bytes), a counter


@dataclass(frozen=True)
class HotnessData:
    region_size: int
    half_life: float
    page_size: int
    targets: tuple[TargetHeat, ...] = ()
    events: int = 0
    matched: int = 0
    dropped: int = 0
    map_entries: int = 0
    map_capacity: int = 0
    notes: tuple[str, ...] = field(default=())  # e.g. processes whose residency could not be read
    event: str = ""  # the tracepoint the program is attached to, or "fexit"/"kretprobe" (the probe)
    # base pages of targets found young since the program was loaded, by who cleared the
    # accessed bit: (("aging", n), ("reclaim", n), ("other", n)); docs/stock-kernel.md
    harvested: tuple[tuple[str, int], ...] = ()
    # recent aging passes of the targets' memcgs, newest first; None: not known (no lru_gen read
    # given to the source), and heat falls back to the latest read's finds
    passes: tuple[AgingPass, ...] | None = None

