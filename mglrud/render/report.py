"""`mglrud report`: a table per mapping of one target or process, from the daemon's /snapshot.json.

Input is the JSON, read through mglrud/snapshot_json.py's typed reader (docs/metrics.md
"/snapshot.json"), so this works against any running daemon and against captured snapshots alike.
The biggest resident-but-never-accessed allocations come first: that is what the
report is for (issue 8).

What "never accessed" can mean depends on the source, and the output says which:
- procfs (smaps `Referenced` after clear_refs, Documentation/filesystems/proc.rst):
  the snapshot holds the bytes referenced during the *latest interval* and a lower
  bound on how long the mapping has been idle, not bytes accessed since start.
  NOT-ACCESSED is resident minus the latest interval's referenced bytes, and IDLE>=
  tells how long that has been true for the whole mapping.
- hotness (BPF, per region of `region_size`): a region whose `idle_seconds` is null
  was never found accessed since the daemon started, so all its resident bytes
  count; ACCESSED is the cumulative bytes found accessed, which counts a page once
  per aging it was found in, so it can exceed RESIDENT.
"""

from __future__ import annotations

from dataclasses import dataclass

from mglrud.render.heatmap import split_bytes
from mglrud.render.text import columns, size
from mglrud.snapshot_json import RegionDoc, SnapshotDoc, read


class ReportError(Exception):
    """The snapshot cannot answer the question asked; the message says why."""


@dataclass(frozen=True)
class Row:
    source: str  # "procfs" or "hotness"
    pid: int
    comm: str
    start: int
    end: int
    name: str
    resident: int | None  # None: the source did not read residency
    accessed: int | None  # None: not known yet (no complete interval)
    never: int | None  # resident bytes not accessed (see the module docstring per source)
    idle: float | None  # lower bound on seconds since any byte was accessed
    nodes: tuple[tuple[int, int], ...]  # (node, bytes), ascending node
    anon: int | None
    file: int | None


def _sort_key(r: Row):
    # Ties (e.g. several untouched buffers of one size): the longest idle, then the largest, then by address.
    return (-(r.never or 0), -(r.idle or 0), -(r.resident or 0), r.pid, r.start)


def procfs_rows(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None) -> list[Row]:
    rows = []
    for p in read(snap).processes(target, pid):
        for m in p.mappings:
            acc = m.accessed_bytes
            rows.append(Row("procfs", p.pid, p.comm, m.lo, m.hi, m.name, m.resident_bytes, acc,
                            None if acc is None else max(m.resident_bytes - acc, 0), m.idle_seconds,
                            tuple(sorted(m.nodes().items())), m.anon_bytes, m.file_bytes))
    return rows


def hotness_rows(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
                 maps: dict[int, list[tuple[int, int, str]]] | None = None) -> list[Row]:
    """One row per region (all its node/lru cells summed), named from procfs mappings where both run.

    With `maps` (pid -> [(start, end, name)] from /proc/PID/maps, read by the caller)
    the regions of a process are summed per mapping instead, each region counted in
    the mapping it overlaps most: a row per allocation, as the procfs source gives.
    """
    snap = read(snap)
    if not snap.hotness:
        return []
    size = snap.hotness.region_size
    names = {(r.pid, r.start, r.end): (r.name, r.comm) for r in procfs_rows(snap)}
    groups: dict[tuple[int, int, int, str], list[RegionDoc]] = {}
    for (tgid, start), rs in snap.regions(target, pid).items():
        owner = _largest_overlap((maps or {}).get(tgid, ()), start, start + size)
        if owner is None:
            name = next((n for (p, s, e), (n, _) in names.items() if p == tgid and s <= start < e), "?")
            owner = (start, start + size, name)
        groups.setdefault((tgid,) + owner, []).extend(rs)
    comms = {p: c for (p, _, _), (_, c) in names.items()}
    rows = []
    for (tgid, start, end, name), rs in groups.items():
        known = [r.resident_bytes for r in rs if r.resident_bytes is not None]
        resident = sum(known) if known else None
        never = sum(r.resident_bytes or 0 for r in rs if r.idle_seconds is None)
        idles = [r.idle_seconds for r in rs if r.idle_seconds is not None]
        nodes, lru = split_bytes(rs, lambda r: r.resident_bytes or 0)
        rows.append(Row("hotness", tgid, comms.get(tgid, "?"), start, end, name, resident,
                        sum(r.accessed_bytes_total for r in rs), never if resident is not None else None,
                        min(idles) if idles else None, tuple(sorted(nodes.items())),
                        lru.get("anon", 0) if known else None, lru.get("file", 0) if known else None))
    return rows


def _largest_overlap(maps, lo: int, hi: int) -> tuple[int, int, str] | None:
    best, most = None, 0
    for s, e, n in maps:
        over = min(e, hi) - max(s, lo)
        if over > most:
            best, most = (s, e, n), over
    return best


def rows(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
         maps: dict[int, list[tuple[int, int, str]]] | None = None) -> list[Row]:
    """Every mapping (procfs) and region (hotness; per mapping with `maps`) of the target or pid,
    biggest never-accessed first."""
    snap = read(snap)
    return sorted(procfs_rows(snap, target, pid) + hotness_rows(snap, target, pid, maps), key=_sort_key)


HEADER = ("SOURCE", "PID", "COMM", "START", "END", "MAPPING", "RESIDENT", "ACCESSED", "NOT-ACCESSED", "IDLE>=",
          "NODES", "ANON", "FILE")


def table(rs: list[Row]) -> list[tuple[str, ...]]:
    out = [HEADER]
    for r in rs:
        out.append((r.source, str(r.pid), r.comm, f"{r.start:#x}", f"{r.end:#x}", r.name, size(r.resident),
                    size(r.accessed), size(r.never), "-" if r.idle is None else f"{r.idle:.0f}s",
                    " ".join(f"{n}:{size(b)}" for n, b in r.nodes) or "-", size(r.anon), size(r.file)))
    return out


def notes(snap: SnapshotDoc | dict, rs: list[Row]) -> list[str]:
    snap = read(snap)
    out = []
    sources = {r.source for r in rs}
    if "procfs" in sources:
        spans = sorted({p.interval_seconds for p in snap.processes() if p.interval_seconds is not None})
        span = f"{spans[-1]:.0f}s" if spans else "not complete yet"
        out.append("procfs: 'accessed since start' is not in the snapshot for this source: ACCESSED is the bytes "
                   f"referenced in the latest interval ({span}), NOT-ACCESSED the rest of RESIDENT, IDLE>= a lower "
                   "bound on the time since any byte of the mapping was referenced.")
    if "hotness" in sources:
        out.append("hotness: NOT-ACCESSED is the resident bytes of regions never found accessed since start; "
                   "ACCESSED is cumulative bytes found accessed (a page counts once per aging), not distinct bytes.")
        if any(r.end - r.start != snap.hotness.region_size for r in rs if r.source == "hotness"):
            out.append(f"hotness rows are mappings from /proc/PID/maps, each summing the "
                       f"{size(snap.hotness.region_size)} regions it overlaps most.")
    if any(r.accessed is None for r in rs):
        out.append("'-' in ACCESSED/NOT-ACCESSED: no complete interval yet; wait one aging interval.")
    return out


def render(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
           maps: dict[int, list[tuple[int, int, str]]] | None = None) -> str:
    """The report as text; raises ReportError when the snapshot has nothing for the target or pid."""
    snap = read(snap)
    if not snap.procfs and not snap.hotness:
        raise ReportError("the snapshot has no per-mapping data: neither the procfs nor the bpf source "
                          "runs in this daemon (see `mglrud check` and `sources:` in the config)")
    rs = rows(snap, target, pid, maps)
    if not rs:
        what = f"target {target!r}" if target is not None else f"pid {pid}"
        known = sorted({p.target for p in snap.processes()}
                       | {t.name for t in (snap.hotness.targets if snap.hotness else ())})
        raise ReportError(f"no resident mapping of {what} in the snapshot; targets in it: "
                          f"{', '.join(known) or 'none'} (is the process a configured target?)")
    return columns(table(rs)) + "\n\n" + "".join(line + "\n" for line in notes(snap, rs))
