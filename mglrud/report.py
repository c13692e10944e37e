"""A Snapshot as JSON (GET /snapshot.json, `mglrud snapshot --json`) or as a text table.

JSON layout, version 1 (the live TUI reads it): generations youngest first,
`gen` relative (0 = youngest), bytes not pages, cold bytes keyed by threshold
seconds as in the metrics' `threshold` label.
"""

from __future__ import annotations

import json

from prometheus_client.utils import floatToGoString

from mglrud import hotness, mappings
from mglrud.model import LRUS, Snapshot, cold_pages, idle_lower_bounds

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
            "cold_bytes": {lru: {floatToGoString(t): cold_pages(h, lru, t) * page for t in snap.cold_thresholds}
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
        # The /proc source's mappings (null when it does not run): see mappings.to_dict.
        "procfs": mappings.to_dict(snap.procfs, snap.cold_thresholds) if snap.procfs is not None else None,
        # The BPF source's per-region heat (null when it does not run): see hotness.to_dict.
        "hotness": hotness.to_dict(snap.hotness) if snap.hotness is not None else None,
    }


def to_json(snap: Snapshot) -> str:
    return json.dumps(to_dict(snap), indent=1, sort_keys=False) + "\n"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def to_table(snap: Snapshot) -> str:
    page = snap.page_size
    rows = [("MEMCG", "NODE", "GEN", "AGE", "ANON", "FILE")]
    for h in snap.lruvecs:
        for rel, g in enumerate(reversed(h.generations)):
            rows.append((h.memcg_path, str(h.node), str(rel), f"{g.age_seconds:.1f}s",
                         _size(g.anon_pages * page), _size(g.file_pages * page)))
    cold = [("MEMCG", "NODE", "LRU", "RESIDENT") + tuple(f"COLD>={floatToGoString(t)}s" for t in snap.cold_thresholds)]
    for h in snap.lruvecs:
        for lru in LRUS:
            cold.append((h.memcg_path, str(h.node), lru, _size(h.pages(lru) * page))
                        + tuple(_size(cold_pages(h, lru, t) * page) for t in snap.cold_thresholds))
    # Without lru_gen (the /proc source alone) the memcg tables would be empty headers.
    out = [_format(rows), "", _format(cold)] if snap.lruvecs or snap.procfs is None else []
    if snap.procfs is not None:
        out += ([""] if out else []) + [_format(mappings.table_rows(snap.procfs, snap.cold_thresholds, _size))]
        out += [f"target {t.name} (procfs): {t.problem}" for t in snap.procfs.targets if t.problem]
    for s in snap.sources:
        if not s.up:
            out.append(f"\nsource {s.name} is down: {s.reason}")
    for t in snap.targets:
        if t.problem:
            out.append(f"target {t.name}: {t.problem}")
    return "\n".join(out) + "\n"


def _format(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
