"""A Snapshot as JSON: GET /snapshot.json and `mglrud snapshot --json`.

JSON layout, version 1 (the live TUI and `mglrud report` read it): generations
youngest first, `gen` relative (0 = youngest), bytes not pages, cold bytes keyed
by threshold seconds as in the metrics' `threshold` label. docs/metrics.md
("/snapshot.json") describes every field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

from mglrud.model.histogram import go_float
from mglrud.model.hotness import HotnessData, RegionHeat
from mglrud.model.lru_gen import LRUS, cold_pages, idle_lower_bounds
from mglrud.model.procfs import ProcfsData, cold_bytes
from mglrud.model.snapshot import Snapshot

JSON_VERSION = 1


@dataclass(frozen=True)
class Query:
    """What GET /snapshot.json?target=&pid=&offset=&limit= asks for: one target's and/or one
    process's part (memcgs, /proc processes, BPF regions), and a page of the BPF region cells
    (offset and limit count cells in document order, after the filters). The empty query is
    the whole document, byte for byte what it was before queries existed."""

    target: str | None = None
    pid: int | None = None
    offset: int = 0
    limit: int | None = None

    @property
    def empty(self) -> bool:
        return self == Query()


def parse_query(qs: str) -> Query:
    """A URL query string -> Query; ValueError naming the bad parameter (HTTP 400)."""
    from urllib.parse import parse_qs

    try:
        q = parse_qs(qs, keep_blank_values=True, strict_parsing=bool(qs), max_num_fields=8)
    except ValueError as e:
        raise ValueError(f"cannot parse the query {qs!r}: {e}") from None
    known = ("target", "pid", "offset", "limit")
    for k, v in q.items():
        if k not in known:
            raise ValueError(f"unknown parameter {k!r}; /snapshot.json takes {', '.join(known)}")
        if len(v) != 1:
            raise ValueError(f"parameter {k!r} given {len(v)} times")
    args: dict = {}
    if "target" in q:
        args["target"] = q["target"][0]
    for k in ("pid", "offset", "limit"):
        if k in q:
            v = q[k][0]
            if not v.isascii() or not v.isdigit() or (k == "pid" and int(v) == 0):
                raise ValueError(f"{k}={v!r} is not a {'positive' if k == 'pid' else 'non-negative'} integer")
            args[k] = int(v)
    return Query(**args)


def to_dict(snap: Snapshot, query: Query | None = None) -> dict:
    """The document; `query` keeps one target's / process's part and a page of region cells,
    and adds "query" (what was asked, and how many region cells matched before paging)."""
    q = query or Query()
    page = snap.page_size
    memcgs = []
    lruvecs = snap.lruvecs
    if q.target is not None:
        mine = {m for t in snap.targets if t.name == q.target for m in t.memcgs}
        lruvecs = tuple(h for h in lruvecs if h.memcg_path in mine)
    if q.pid is not None:  # the memcgs of the process's region cells (what the heatmap shows them with)
        ids = {r.memcg_id for t in (snap.hotness.targets if snap.hotness else ()) for r in t.regions
               if r.tgid == q.pid}
        lruvecs = tuple(h for h in lruvecs if h.memcg_id in ids)
    for h in lruvecs:
        idle = idle_lower_bounds(h)
        gens = []
        for rel, (g, i) in enumerate(zip(reversed(h.generations), reversed(idle))):
            gens.append({"gen": rel, "seq": g.seq, "age_seconds": g.age_seconds, "idle_seconds_min": i,
                         "anon_bytes": g.anon_pages * page, "file_bytes": g.file_pages * page})
        memcgs.append({
            "memcg": h.memcg_path, "memcg_id": h.memcg_id, "node": h.node,
            "resident_bytes": {lru: h.pages(lru) * page for lru in LRUS},
            "cold_bytes": {lru: {go_float(t): cold_pages(h, lru, t) * page for t in snap.cold_thresholds}
                           for lru in LRUS},
            "generations": gens,
        })
    doc = {
        "version": JSON_VERSION,
        "taken_at": snap.taken_at,
        "page_size": page,
        "cold_thresholds_seconds": list(snap.cold_thresholds),
        "sources": [{"name": s.name, "up": s.up, "reason": s.reason} for s in snap.sources],
        "targets": [{"name": t.name, "kind": t.kind, "selector": t.selector, "memcgs": list(t.memcgs),
                     "problem": t.problem, "last_success": t.last_success} for t in snap.targets],
        "memcgs": memcgs,
        "aging": {"runs": snap.aging.runs, "errors": dict(snap.aging.errors)},
        # The /proc source's mappings (null when it does not run): see procfs_dict.
        "procfs": procfs_dict(snap.procfs, snap.cold_thresholds, snap.redacted, query=q) if snap.procfs is not None else None,
        # The BPF source's per-region heat (null when it does not run): see hotness_dict.
        "hotness": hotness_dict(snap.hotness, snap.redacted, query=q) if snap.hotness is not None else None,
        # true: served to a client who may not see addresses (mglrud/redact.py): mapping
        # addresses are null, names are classes, and there are no regions or bucket ranges
        "redacted": snap.redacted,
    }
    if not q.empty:
        matched = sum(1 for t in snap.hotness.targets if q.target in (None, t.name) for r in t.regions
                      if q.pid in (None, r.tgid)) if snap.hotness is not None else 0
        doc["query"] = {"target": q.target, "pid": q.pid, "offset": q.offset, "limit": q.limit,
                        "regions_matched": matched}
    return doc


def to_json(snap: Snapshot, query: Query | None = None) -> str:
    return json.dumps(to_dict(snap, query), indent=1, sort_keys=False) + "\n"


def procfs_dict(data: ProcfsData, cold_thresholds: tuple[float, ...] = (), redacted: bool = False,
                query: Query | None = None) -> dict:
    """The /proc source's part of /snapshot.json: every resident mapping of every process read.

    Unlike the metrics, nothing is grouped or cut to the top K: the JSON is for
    tools (the live TUI) that want the whole picture. Addresses are hex strings;
    mappings without a resident byte are counted, not listed.
    """
    q = query or Query()
    procs = []
    for p in data.processes:
        if q.target not in (None, p.target) or q.pid not in (None, p.pid):
            continue
        maps = []
        for m in p.mappings:
            if not m.resident_bytes:
                continue
            maps.append({
                "start": None if redacted else f"{m.start:#x}", "end": None if redacted else f"{m.end:#x}",
                "name": m.name, "perms": m.perms,
                "resident_bytes": m.resident_bytes, "anon_bytes": m.anon_bytes, "file_bytes": m.file_bytes,
                "swap_bytes": m.swap_bytes, "accessed_bytes": m.accessed_bytes, "idle_seconds": m.idle_seconds,
                "node_bytes": {str(n): b for n, b in m.node_bytes},
                "cold_bytes": {go_float(t): cold_bytes(m, t, p.interval_seconds) for t in cold_thresholds},
            })
        procs.append({"pid": p.pid, "comm": p.comm, "target": p.target, "read_at": p.read_at,
                      "interval_seconds": p.interval_seconds, "resident_bytes": p.resident_bytes,
                      "mappings": maps, "mappings_not_resident": len(p.mappings) - len(maps)})
    s = data.stats
    return {
        # procfs.clear_refs: false (the default) -> accessed_bytes and idle_seconds are null, and say why
        "clear_refs": data.clear_refs,
        "accessed": ("measured: clear_refs written after each read" if data.clear_refs else
                     "not measured: procfs.clear_refs is off (set it to true to measure accessed bytes)"),
        "targets": [{"name": t.name, "pids": list(t.pids), "problem": t.problem} for t in data.targets
                    if q.target in (None, t.name)],
        "processes": procs,
        "stats": {"reads": s.reads, "errors": dict(s.errors), "read_seconds": s.read_seconds,
                  "clear_refs_seconds": s.clear_seconds, "scanned_bytes": s.bytes_scanned},
    }


def hotness_dict(data: HotnessData, redacted: bool = False, query: Query | None = None) -> dict:
    """The BPF source's part of /snapshot.json: every region cell and bucket, in bytes.
    `idle_seconds` is null for a resident region never found accessed since start;
    `resident_bytes` is null when the process's residency was not read. `query` keeps
    one target, one process's cells, and a page of the cells (Query)."""
    page = data.page_size
    q = query or Query()
    end = None if q.limit is None else q.offset + q.limit
    seen = 0

    def cells(t) -> list:
        nonlocal seen
        if q.empty:
            return [region(r) for r in t.regions]
        out = []
        for r in t.regions:
            if q.pid is None or r.tgid == q.pid:
                if seen >= q.offset and (end is None or seen < end):
                    out.append(region(r))
                seen += 1
        return out

    def region(r: RegionHeat) -> dict:
        return {"tgid": r.tgid, "memcg_id": r.memcg_id, "start": r.start, "node": r.node, "lru": r.lru,
                "resident_bytes": None if r.resident_pages is None else r.resident_pages * page,
                "accessed_bytes": r.accessed_pages * page,
                "accessed_bytes_total": r.accessed_pages_total * page,
                "heat_bytes_per_second": r.rate * page,
                "idle_seconds": r.idle_seconds if math.isfinite(r.idle_seconds) else None,
                "found": [{"seconds_ago": a, "bytes": n * page} for a, n in r.found],
                "found_in": [{"seq": q, "bytes": n * page} for q, n in r.found_in]}

    return {
        "region_size": data.region_size,
        "event": data.event,
        "half_life_seconds": data.half_life,
        "events": data.events, "matched": data.matched, "dropped": data.dropped,
        "map_entries": data.map_entries, "map_capacity": data.map_capacity,
        "notes": list(data.notes),
        # Aging passes of the targets' memcgs, newest first (null: not known): heat is per pass,
        # a region's `found_in` the bytes each pass found
        "passes": None if data.passes is None else [
            {"memcg_id": p.memcg_id, "seq": p.seq, "at": p.at, "measured": p.measured} for p in data.passes],
        "targets": [{
            "name": t.name, "kind": t.kind, "tgids": list(t.tgids), "memcg_ids": list(t.memcg_ids),
            "accessed_bytes_total": [{"node": n, "lru": l, "bytes": b} for n, l, b in t.accessed_bytes_total],
            "buckets": [{"ranges": [] if redacted else [list(x) for x in b.ranges], "heat_bytes_per_second": b.heat,
                         "accessed_bytes": b.accessed_bytes} for b in t.buckets],
            "regions": [] if redacted else cells(t),
        } for t in data.targets if q.target in (None, t.name)],
    }


# ---------------------------------------------------------------- the typed reader
#
# What `mglrud report`, `mglrud heatmap` and the TUI read: the JSON above, parsed into
# frozen dataclasses with the same field names and JSON types (addresses of /proc
# mappings stay hex strings, as written), so that everything reading a snapshot
# reads it through this one schema. A field missing from the document (an older
# daemon, or a partial document in a test) takes the default given here.

class SchemaError(ValueError):
    """The document is not a mglrud snapshot; the message names the field."""


@dataclass(frozen=True)
class SourceDoc:
    name: str
    up: bool = False
    reason: str = ""


@dataclass(frozen=True)
class TargetDoc:
    name: str
    kind: str = ""
    selector: str = ""
    memcgs: tuple[str, ...] = ()
    problem: str = ""
    last_success: float | None = None


@dataclass(frozen=True)
class GenerationDoc:
    gen: int = 0
    seq: int = 0
    age_seconds: float = 0.0
    idle_seconds_min: float = 0.0
    anon_bytes: int = 0
    file_bytes: int = 0


@dataclass(frozen=True)
class MemcgDoc:
    memcg: str = ""
    memcg_id: int = 0
    node: int = 0
    resident_bytes: dict = field(default_factory=dict)  # lru -> bytes
    cold_bytes: dict = field(default_factory=dict)  # lru -> threshold -> bytes
    generations: tuple[GenerationDoc, ...] = ()  # youngest first


@dataclass(frozen=True)
class MappingDoc:
    start: str | None  # hex; None in a redacted document (mglrud/redact.py)
    end: str | None
    name: str
    perms: str
    resident_bytes: int
    anon_bytes: int
    file_bytes: int
    swap_bytes: int
    accessed_bytes: int | None
    idle_seconds: float | None
    node_bytes: dict = field(default_factory=dict)  # node (a string, as in JSON) -> bytes
    cold_bytes: dict = field(default_factory=dict)

    @property
    def lo(self) -> int:
        return int(self.start, 16) if self.start else 0

    @property
    def hi(self) -> int:
        return int(self.end, 16) if self.end else 0

    def nodes(self) -> dict[int, int]:
        return {int(n): b for n, b in self.node_bytes.items()}


@dataclass(frozen=True)
class ProcessDoc:
    pid: int
    comm: str
    target: str
    read_at: float
    interval_seconds: float | None
    resident_bytes: int
    mappings: tuple[MappingDoc, ...] = ()
    mappings_not_resident: int = 0


@dataclass(frozen=True)
class ProcfsTargetDoc:
    name: str
    pids: tuple[int, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class ProcfsDoc:
    clear_refs: bool = False
    accessed: str = ""
    targets: tuple[ProcfsTargetDoc, ...] = ()
    processes: tuple[ProcessDoc, ...] = ()
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FoundDoc:
    seconds_ago: float
    bytes: int


@dataclass(frozen=True)
class FoundInDoc:
    seq: int
    bytes: int


@dataclass(frozen=True)
class PassDoc:
    memcg_id: int
    seq: int  # the memcg's max_seq after the pass
    at: float  # wall time of the pass
    measured: bool = True  # False: the first pass seen, what it found accumulated over an unknown time


@dataclass(frozen=True)
class RegionDoc:
    tgid: int
    memcg_id: int
    start: int
    node: int
    lru: str
    resident_bytes: int | None
    accessed_bytes: int
    accessed_bytes_total: int
    heat_bytes_per_second: float
    idle_seconds: float | None
    found: tuple[FoundDoc, ...] | None = None  # newest first; None: a daemon older than `found`
    found_in: tuple[FoundInDoc, ...] = ()  # per aging pass (PassDoc.seq of its memcg), newest first


@dataclass(frozen=True)
class AccessedDoc:
    node: int
    lru: str
    bytes: int


@dataclass(frozen=True)
class BucketDoc:
    ranges: tuple[tuple[int, ...], ...]  # (tgid, start, end)
    heat_bytes_per_second: float
    accessed_bytes: int


@dataclass(frozen=True)
class TargetHeatDoc:
    name: str
    kind: str = ""
    tgids: tuple[int, ...] = ()
    memcg_ids: tuple[int, ...] = ()
    accessed_bytes_total: tuple[AccessedDoc, ...] = ()
    buckets: tuple[BucketDoc, ...] = ()
    regions: tuple[RegionDoc, ...] = ()


@dataclass(frozen=True)
class HotnessDoc:
    region_size: int
    event: str = ""
    half_life_seconds: float = 0.0
    events: int = 0
    matched: int = 0
    dropped: int = 0
    map_entries: int = 0
    map_capacity: int = 0
    notes: tuple[str, ...] = ()
    targets: tuple[TargetHeatDoc, ...] = ()
    passes: tuple[PassDoc, ...] | None = None  # newest first; None: a daemon older than passes


@dataclass(frozen=True)
class SnapshotDoc:
    version: int = JSON_VERSION
    taken_at: float = 0.0
    page_size: int = 4096
    cold_thresholds_seconds: tuple[float, ...] = ()
    sources: tuple[SourceDoc, ...] = ()
    targets: tuple[TargetDoc, ...] = ()
    memcgs: tuple[MemcgDoc, ...] = ()
    aging: dict = field(default_factory=dict)
    procfs: ProcfsDoc | None = None
    hotness: HotnessDoc | None = None
    redacted: bool = False  # no addresses, file names or regions: mglrud/redact.py

    def target_names(self) -> set[str]:
        names = {t.name for t in self.targets}
        names |= {t.name for t in self.procfs.targets} if self.procfs else set()
        names |= {t.name for t in self.hotness.targets} if self.hotness else set()
        return names

    def processes(self, target: str | None = None, pid: int | None = None) -> list[ProcessDoc]:
        """The /proc part's processes of `target` (any: None) and `pid` (any: None)."""
        return [p for p in (self.procfs.processes if self.procfs else ())
                if (target is None or p.target == target) and (pid is None or p.pid == pid)]

    def regions(self, target: str | None = None, pid: int | None = None) -> dict[tuple[int, int], list[RegionDoc]]:
        """The BPF part's region cells of `target` (any: None) and `pid` (any: None), per (tgid, start)."""
        out: dict[tuple[int, int], list[RegionDoc]] = {}
        for t in self.hotness.targets if self.hotness else ():
            if target is None or t.name == target:
                for r in t.regions:
                    if pid is None or r.tgid == pid:
                        out.setdefault((r.tgid, r.start), []).append(r)
        return out


def _build(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where}: no field {f.name!r}")
        return tp(**kwargs)
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        return None if value is None else _build(next(a for a in args if a is not type(None)), value, where)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    return value  # int, float, str, bool, dict: as JSON has them


def from_dict(doc: dict) -> SnapshotDoc:
    """A decoded /snapshot.json -> SnapshotDoc; raises SchemaError naming the first bad field."""
    return _build(SnapshotDoc, doc, "snapshot")


def read(snap: "SnapshotDoc | dict") -> SnapshotDoc:
    """What the renderers take: a SnapshotDoc as it is, a decoded document parsed."""
    return snap if isinstance(snap, SnapshotDoc) else from_dict(snap)
