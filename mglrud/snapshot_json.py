"""A Snapshot as JSON: GET /snapshot.json and `mglrud snapshot --json`.

JSON layout, version 1 (the live TUI and `mglrud report` read it): generations
youngest first, `gen` relative (0 = youngest), bytes not pages, cold bytes keyed
by threshold seconds as in the metrics' `threshold` label. docs/metrics.md
("/snapshot.json") describes every field.
"""

from __future__ import annotations

import json
import math

from mglrud.model.histogram import go_float
from mglrud.model.hotness import HotnessData, RegionHeat
from mglrud.model.lru_gen import LRUS, cold_pages, idle_lower_bounds
from mglrud.model.procfs import ProcfsData, cold_bytes
from mglrud.model.snapshot import Snapshot

JSON_VERSION = 1


def to_dict(snap: Snapshot) -> dict:
    page = snap.page_size
    memcgs = []
    for h in snap.lruvecs:
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
    return {
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
        "procfs": procfs_dict(snap.procfs, snap.cold_thresholds) if snap.procfs is not None else None,
        # The BPF source's per-region heat (null when it does not run): see hotness_dict.
        "hotness": hotness_dict(snap.hotness) if snap.hotness is not None else None,
    }


def to_json(snap: Snapshot) -> str:
    return json.dumps(to_dict(snap), indent=1, sort_keys=False) + "\n"


def procfs_dict(data: ProcfsData, cold_thresholds: tuple[float, ...] = ()) -> dict:
    """The /proc source's part of /snapshot.json: every resident mapping of every process read.

    Unlike the metrics, nothing is grouped or cut to the top K: the JSON is for
    tools (the live TUI) that want the whole picture. Addresses are hex strings;
    mappings without a resident byte are counted, not listed.
    """
    procs = []
    for p in data.processes:
        maps = []
        for m in p.mappings:
            if not m.resident_bytes:
                continue
            maps.append({
                "start": f"{m.start:#x}", "end": f"{m.end:#x}", "name": m.name, "perms": m.perms,
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
        "targets": [{"name": t.name, "pids": list(t.pids), "problem": t.problem} for t in data.targets],
        "processes": procs,
        "stats": {"reads": s.reads, "errors": dict(s.errors), "read_seconds": s.read_seconds,
                  "clear_refs_seconds": s.clear_seconds, "scanned_bytes": s.bytes_scanned},
    }


def hotness_dict(data: HotnessData) -> dict:
    """The BPF source's part of /snapshot.json: every region cell and bucket, in bytes.
    `idle_seconds` is null for a resident region never found accessed since start;
    `resident_bytes` is null when the process's residency was not read."""
    page = data.page_size

    def region(r: RegionHeat) -> dict:
        return {"tgid": r.tgid, "memcg_id": r.memcg_id, "start": r.start, "node": r.node, "lru": r.lru,
                "resident_bytes": None if r.resident_pages is None else r.resident_pages * page,
                "accessed_bytes": r.accessed_pages * page,
                "accessed_bytes_total": r.accessed_pages_total * page,
                "heat_bytes_per_second": r.rate * page,
                "idle_seconds": r.idle_seconds if math.isfinite(r.idle_seconds) else None,
                "found": [{"seconds_ago": a, "bytes": n * page} for a, n in r.found]}

    return {
        "region_size": data.region_size,
        "event": data.event,
        "half_life_seconds": data.half_life,
        "events": data.events, "matched": data.matched, "dropped": data.dropped,
        "map_entries": data.map_entries, "map_capacity": data.map_capacity,
        "notes": list(data.notes),
        "targets": [{
            "name": t.name, "kind": t.kind, "tgids": list(t.tgids), "memcg_ids": list(t.memcg_ids),
            "accessed_bytes_total": [{"node": n, "lru": l, "bytes": b} for n, l, b in t.accessed_bytes_total],
            "buckets": [{"ranges": [list(x) for x in b.ranges], "heat_bytes_per_second": b.heat,
                         "accessed_bytes": b.accessed_bytes} for b in t.buckets],
            "regions": [region(r) for r in t.regions],
        } for t in data.targets],
    }
