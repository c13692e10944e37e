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
from dataclasses import dataclass
from itertools import islice

from mglrud.model.histogram import go_float
from mglrud.model.hotness import HotnessData, RegionHeat
from mglrud.model.lru_gen import LRUS, cold_pages, idle_lower_bounds
from mglrud.model.procfs import ProcfsData, cold_bytes
from mglrud.model.snapshot import Snapshot

# The typed reader of this JSON is snapshot_doc.py; its names are here too (one module to import).
from mglrud.snapshot_doc import (JSON_VERSION, SchemaError, SourceDoc, TargetDoc, GenerationDoc, MemcgDoc, MappingDoc, ProcessDoc, ProcfsTargetDoc, ProcfsDoc, FoundDoc, FoundInDoc, PassDoc, RegionDoc, AccessedDoc, BucketDoc, TargetHeatDoc, HotnessDoc, SnapshotDoc, from_dict, read)  # noqa: E402,F401


FORMS = ("rows", "columns")
# region_columns' fields, in RegionDoc's order; "found" and "found_in" hold per cell a flat list
# of pairs: [seconds_ago, bytes, seconds_ago, bytes, ...] and [seq, bytes, ...]
REGION_COLUMNS = ("tgid", "memcg_id", "start", "node", "lru", "resident_bytes", "accessed_bytes",
                  "accessed_bytes_total", "heat_bytes_per_second", "idle_seconds", "found", "found_in")


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
    # "columns": each target's region cells as one array per field ("region_columns"), and the
    # document without indentation: a third of the bytes (docs/metrics.md, "/snapshot.json")
    form: str = "rows"
    # at most this many of each cell's `found` (newest first; `found_in` is not cut: the heatmap
    # draws every pass listed from it). `mglrud heatmap` reads only the newest, `report` none.
    found: int | None = None

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
    known = ("target", "pid", "offset", "limit", "form", "found")
    for k, v in q.items():
        if k not in known:
            raise ValueError(f"unknown parameter {k!r}; /snapshot.json takes {', '.join(known)}")
        if len(v) != 1:
            raise ValueError(f"parameter {k!r} given {len(v)} times")
    args: dict = {}
    if "target" in q:
        args["target"] = q["target"][0]
    if "form" in q:
        if q["form"][0] not in FORMS:
            raise ValueError(f"form={q['form'][0]!r} is not one of {', '.join(FORMS)}")
        args["form"] = q["form"][0]
    for k in ("pid", "offset", "limit", "found"):
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
        doc["query"] = {"target": q.target, "pid": q.pid, "offset": q.offset, "limit": q.limit, "form": q.form,
                        "found": q.found,
                        "regions_matched": matched}
    return doc


def to_json(snap: Snapshot, query: Query | None = None) -> str:
    if query is not None and query.form == "columns":
        return json.dumps(to_dict(snap, query), separators=(",", ":")) + "\n"
    return json.dumps(to_dict(snap, query), indent=1, sort_keys=False) + "\n"


_PIECE = 1 << 13  # JSON tokens per piece of to_json_pieces(): ~40 KiB of text


def to_json_pieces(snap: Snapshot, query: Query | None = None) -> list[bytes]:
    """to_json(snap, query).encode() in pieces of _PIECE tokens (b"".join() of them is that
    text, byte for byte), for /snapshot.json to write one after another.

    Why: json.dumps() with an indent is the json module's Python encoder, which yields the text
    in tokens of a few characters and joins them all at the end: at 3,000 memcgs (5.7 MiB of
    text) the list of ~1M token strings was ~55 MiB, the daemon's peak RSS. Here the tokens are
    joined and encoded a piece at a time, so the peak is the document's dicts and the bytes.
    (The compact form, columns, is the C encoder's: one string, no token list.)"""
    if query is not None and query.form == "columns":
        return [to_json(snap, query).encode()]
    # json.dumps(doc, indent=1) is JSONEncoder(indent=1).encode(doc): these tokens, joined
    tokens = json.JSONEncoder(indent=1, sort_keys=False).iterencode(to_dict(snap, query))
    pieces: list[bytes] = []
    while batch := list(islice(tokens, _PIECE)):
        pieces.append("".join(batch).encode())
    pieces.append(b"\n")
    return pieces


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
    cut = q.found  # None: all
    seen = 0

    def picked(t) -> list:
        nonlocal seen
        if q.pid is None and not q.offset and end is None:
            seen += len(t.regions)
            return list(t.regions)
        out = []
        for r in t.regions:
            if q.pid is None or r.tgid == q.pid:
                if seen >= q.offset and (end is None or seen < end):
                    out.append(r)
                seen += 1
        return out

    def cells(t) -> list:
        return [region(r) for r in picked(t)]

    def columns(t) -> dict:
        """The cells as one list per field: the names once, not once per cell."""
        rs = picked(t)
        cols = [list(c) for c in zip(*rs)] if rs else [[] for _ in REGION_COLUMNS]
        tgid, memcg_id, start, node, lru, res, acc, total, rate, idle, found, found_in = cols
        return dict(zip(REGION_COLUMNS, (
            tgid, memcg_id, start, node, lru, [None if x is None else x * page for x in res],
            [x * page for x in acc], [x * page for x in total], [x * page for x in rate],
            [x if math.isfinite(x) else None for x in idle],
            [[v for a, n in f[:cut] for v in (a, n * page)] for f in found],
            [[v for s, n in f for v in (s, n * page)] for f in found_in])))

    def region(r: RegionHeat) -> dict:
        return {"tgid": r.tgid, "memcg_id": r.memcg_id, "start": r.start, "node": r.node, "lru": r.lru,
                "resident_bytes": None if r.resident_pages is None else r.resident_pages * page,
                "accessed_bytes": r.accessed_pages * page,
                "accessed_bytes_total": r.accessed_pages_total * page,
                "heat_bytes_per_second": r.rate * page,
                "idle_seconds": r.idle_seconds if math.isfinite(r.idle_seconds) else None,
                "found": [{"seconds_ago": a, "bytes": n * page} for a, n in r.found[:cut]],
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
            "regions": [] if redacted or q.form == "columns" else cells(t),
            **({"region_columns": columns(t) if not redacted else columns(dataclasses.replace(t, regions=()))}
               if q.form == "columns" else {}),
        } for t in data.targets if q.target in (None, t.name)],
    }
