"""`mglrud snapshot`'s text: the memcg generation and cold tables, and the /proc source's top-K groups."""

from __future__ import annotations

from mglrud.model.histogram import go_float
from mglrud.model.lru_gen import LRUS, cold_pages
from mglrud.model.procfs import ProcfsData, cold_bytes, group_mappings
from mglrud.model.snapshot import Snapshot
from mglrud.render.text import columns, size


def to_table(snap: Snapshot) -> str:
    page = snap.page_size
    rows = [("MEMCG", "NODE", "GEN", "AGE", "ANON", "FILE")]
    for h in snap.lruvecs:
        for rel, g in enumerate(reversed(h.generations)):
            rows.append((h.memcg_path, str(h.node), str(rel), f"{g.age_seconds:.1f}s",
                         size(g.anon_pages * page), size(g.file_pages * page)))
    cold = [("MEMCG", "NODE", "LRU", "RESIDENT") + tuple(f"COLD>={go_float(t)}s" for t in snap.cold_thresholds)]
    for h in snap.lruvecs:
        for lru in LRUS:
            cold.append((h.memcg_path, str(h.node), lru, size(h.pages(lru) * page))
                        + tuple(size(cold_pages(h, lru, t) * page) for t in snap.cold_thresholds))
    # Without lru_gen (the /proc source alone) the memcg tables would be empty headers.
    out = [columns(rows), "", columns(cold)] if snap.lruvecs or snap.procfs is None else []
    if snap.procfs is not None:
        out += ([""] if out else []) + [columns(procfs_rows(snap.procfs, snap.cold_thresholds))]
        out += [f"target {t.name} (procfs): {t.problem}" for t in snap.procfs.targets if t.problem]
    for s in snap.sources:
        if not s.up:
            out.append(f"\nsource {s.name} is down: {s.reason}")
    for t in snap.targets:
        if t.problem:
            out.append(f"target {t.name}: {t.problem}")
    return "\n".join(out) + "\n"


def procfs_rows(data: ProcfsData, cold_thresholds: tuple[float, ...], size=size) -> list[tuple[str, ...]]:
    """`mglrud snapshot`'s table: per target, the same top-K groups the metrics show; `size` formats bytes."""
    rows = [("TARGET", "COMM", "MAPPING", "RESIDENT", "ACCESSED", "IDLE")
            + tuple(f"COLD>={go_float(t)}s" for t in cold_thresholds)]
    measured = getattr(data, "clear_refs", True)
    for t in data.targets:
        procs = tuple(p for p in data.processes if p.target == t.name)
        for g in group_mappings(procs, t.name, data.top_mappings):
            idles = [m.idle_seconds for m, span in g.mappings if m.idle_seconds is not None and span is not None]
            rows.append((t.name, g.comm, g.name, size(sum(g.resident.values())),
                         "-" if g.accessed is None else size(g.accessed),
                         f"{min(idles):.0f}s" if idles else "-")
                        # without clear_refs nothing is ever measured idle: unknown, not 0
                        + tuple(size(sum(cold_bytes(m, th, span) for m, span in g.mappings))
                                if measured else "-" for th in cold_thresholds))
    return rows
