"""Address x time heatmap of one target or process, from a series of /snapshot.json documents, as text.

Rows are address ranges labelled with the hex start and the mapping they belong
to; columns are snapshots, oldest left. Pure: the caller fetches the snapshots
(the live TUI of issue 8 polls the daemon; tests pass captured ones) and prints.

Where the rows come from depends on the source (docs/metrics.md "/snapshot.json"):
- procfs: one row per mapping; heat is the share of its resident bytes referenced
  in the latest interval (smaps `Referenced` after clear_refs).
- hotness (BPF): one row per region of `region_size`; heat is defined per aging
  pass (`passes` in the snapshot; a memcg's max_seq moving): the share of the region
  that pass found accessed (its `found_in` entry with the pass's seq; 0 when it found
  nothing there). columns() puts each pass in the interval it ran in and a snapshot
  only as "resident, not measured", so that an interval with no pass reads "?" rather
  than "nothing accessed". A snapshot from a daemon without `passes`: the latest finds.
  The mapping name comes from the procfs part of the same snapshot where that source
  runs too, or from /proc/PID/maps the caller read, else "?".

Overlays: `heat` (a ramp from "." to "@"), `node` (the node holding most of the
row's resident bytes, as a digit), `lru` ("a" anon, "f" file, by majority).
A blank cell: the row did not exist (or was not resident) in that snapshot;
"?": it existed but nothing measured it in that interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from mglrud.snapshot_json import PassDoc, RegionDoc, SnapshotDoc, read

RAMP = ".:-=+*#%@"  # "." none accessed ... "@" (nearly) all
OVERLAYS = ("heat", "node", "lru")


@dataclass(frozen=True, order=True)
class RowKey:
    pid: int
    start: int
    end: int
    name: str


@dataclass(frozen=True)
class Cell:
    heat: float | None  # share of the row accessed in the latest interval, 0..1; None: not measured
    node: int | None
    lru: str | None  # "anon" or "file"


@dataclass(frozen=True)
class Grid:
    rows: tuple[RowKey, ...]
    times: tuple[float, ...]  # taken_at of each column, oldest first
    cells: tuple[tuple[Cell | None, ...], ...]  # cells[row][column]


def _majority(split: dict) -> object:
    live = {k: v for k, v in split.items() if v > 0}
    return min(live, key=lambda k: (-live[k], k)) if live else None


def procfs_cells(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None) -> dict[RowKey, Cell]:
    snap = read(snap)
    out = {}
    for p in snap.processes(target, pid):
        for m in p.mappings:
            res, acc = m.resident_bytes, m.accessed_bytes
            heat = None if acc is None else (min(acc / res, 1.0) if res else 0.0)
            out[RowKey(p.pid, m.lo, m.hi, m.name)] = Cell(
                heat, _majority(m.nodes()), _majority({"anon": m.anon_bytes, "file": m.file_bytes}))
    return out


def _hotness_rows(snap: SnapshotDoc, target, pid, maps) -> list[tuple[RowKey, list[RegionDoc], object, object]]:
    """(row, its region cells, majority node, majority lru) of every BPF region of the target or pid."""
    size = snap.hotness.region_size
    named = sorted(procfs_cells(snap))  # names only: any target, any pid
    named += [RowKey(p, s, e, n) for p, ms in (maps or {}).items() for s, e, n in ms]
    out = []
    for (tgid, start), rs in snap.regions(target, pid).items():
        name = next((k.name for k in named if k.pid == tgid and k.start < start + size and start < k.end), "?")
        # residency where read, else what was accessed, to say where the row lives
        nodes, lrus = split_bytes(rs, lambda r: r.resident_bytes or r.accessed_bytes_total)
        out.append((RowKey(tgid, start, start + size, name), rs, _majority(nodes), _majority(lrus)))
    return out


def pass_heat(rs: list[RegionDoc], passes: dict[int, PassDoc], size: int) -> float | None:
    """Share of a row that the given aging passes (one per memcg) found accessed; None when no
    region of the row has a measured pass (none yet, or only the first, whose interval is unknown)."""
    acc, measured = 0, False
    for r in rs:
        p = passes.get(r.memcg_id)
        if p is None or not p.measured:
            continue
        measured = True
        acc += sum(f.bytes for f in r.found_in if f.seq == p.seq)
    return min(acc / size, 1.0) if measured else None


def hotness_cells(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
                  maps: dict[int, list[tuple[int, int, str]]] | None = None) -> dict[RowKey, Cell]:
    """`maps`: pid -> [(start, end, name)] read from /proc/PID/maps by the caller, to name
    regions where the snapshot has no procfs part. Heat: what the newest aging pass of the
    row's memcg found (a snapshot with `passes`), else (an older daemon) the latest finds."""
    snap = read(snap)
    if not snap.hotness:
        return {}
    size = snap.hotness.region_size
    rows = _hotness_rows(snap, target, pid, maps)
    if snap.hotness.passes is not None:
        newest: dict[int, PassDoc] = {}
        for p in sorted(snap.hotness.passes, key=lambda p: (p.at, p.seq)):
            newest[p.memcg_id] = p
        return {k: Cell(pass_heat(rs, newest, size), node, lru) for k, rs, node, lru in rows}
    latest = _latest_pass(snap, [r for _, rs, _, _ in rows for r in rs])
    out = {}
    for key, rs, node, lru in rows:
        if latest is _NO_FOUND:  # an older snapshot without `found`: the latest cycle's deltas
            acc = sum(r.accessed_bytes for r in rs)
        else:
            acc = sum(r.found[0].bytes for r in rs
                      if latest is not None and r.found and r.found[0].seconds_ago <= latest + WALK)
        out[key] = Cell(min(acc / size, 1.0), node, lru)
    return out


def pass_columns(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
                 maps: dict[int, list[tuple[int, int, str]]] | None = None,
                 seen: set | None = None) -> list[tuple[float, dict[RowKey, Cell]]]:
    """One column per aging pass the snapshot lists and `seen` (updated) does not hold yet, at the
    pass's time: the rows of its memcg with what it found ('?' for a pass not measured)."""
    snap = read(snap)
    if not snap.hotness or snap.hotness.passes is None:
        return []
    seen = set() if seen is None else seen
    size = snap.hotness.region_size
    rows = _hotness_rows(snap, target, pid, maps)
    out = []
    for p in sorted(snap.hotness.passes, key=lambda p: (p.at, p.seq)):
        if (p.memcg_id, p.seq) in seen:
            continue
        seen.add((p.memcg_id, p.seq))
        col = {k: Cell(pass_heat(rs, {p.memcg_id: p}, size), node, lru)
               for k, rs, node, lru in rows if any(r.memcg_id == p.memcg_id for r in rs)}
        if col:
            out.append((p.at, col))
    return out


def columns(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
            maps: dict[int, list[tuple[int, int, str]]] | None = None,
            seen: set | None = None) -> list[tuple[float, dict[RowKey, Cell]]]:
    """A snapshot as grid columns, by time. Without aging passes (the /proc source, an older daemon):
    one column at taken_at. With them, heat is per aging pass: a column at taken_at that only says
    which rows are resident (heat not measured, '?'), and one per pass not in `seen`, at its own time.
    So an interval holding only snapshots taken between two passes is drawn as not measured, and a
    pass read late is drawn in the interval it ran in."""
    snap = read(snap)
    here = cells(snap, target, pid, maps)
    if not snap.hotness or snap.hotness.passes is None:
        return [(snap.taken_at, here)]
    bpf = {k for k, _, _, _ in _hotness_rows(snap, target, pid, maps)}
    presence = {k: (Cell(None, c.node, c.lru) if k in bpf else c) for k, c in here.items()}
    return sorted([(snap.taken_at, presence)] + pass_columns(snap, target, pid, maps, seen), key=lambda c: c[0])


def split_bytes(regions: list[RegionDoc], weight) -> tuple[dict[int, int], dict[str, int]]:
    """The `weight` of region cells summed per node and per LRU: where a row's bytes live."""
    nodes: dict[int, int] = {}
    lrus: dict[str, int] = {}
    for r in regions:
        b = weight(r)
        nodes[r.node] = nodes.get(r.node, 0) + b
        lrus[r.lru] = lrus.get(r.lru, 0) + b
    return nodes, lrus


def cells(snap: SnapshotDoc | dict, target: str | None = None, pid: int | None = None,
          maps: dict[int, list[tuple[int, int, str]]] | None = None) -> dict[RowKey, Cell]:
    """One snapshot's rows: procfs mappings and BPF regions of the target or pid."""
    snap = read(snap)
    return {**procfs_cells(snap, target, pid), **hotness_cells(snap, target, pid, maps)}


# Seconds: the accesses one aging pass finds are stamped within its page-table walk.
WALK = 1.0
_NO_FOUND = object()


def _latest_pass(snap: SnapshotDoc, regions: list[RegionDoc]):
    """Seconds since the latest aging pass of these regions' memcgs found anything (None: the latest
    pass found none of them accessed). Heat is what that pass found, like the /proc source's
    "latest interval": a region's `accessed_bytes` is only what the latest *cycle* found, which
    is 0 in every snapshot published between two agings."""
    if any(r.found is None for r in regions):
        return _NO_FOUND
    finds = [r.found[0].seconds_ago for r in regions if r.found]
    if not finds:
        return None
    newest = min(finds)
    ids = {r.memcg_id for r in regions}
    ages = [m.generations[0].age_seconds for m in snap.memcgs if m.memcg_id in ids and m.generations]
    # A pass after the newest find (its generation is younger) that found nothing.
    if ages and newest > min(ages) + WALK:
        return None
    return newest


def grid(snaps: list[SnapshotDoc | dict], target: str | None = None, pid: int | None = None,
         maps: dict[int, list[tuple[int, int, str]]] | None = None) -> Grid:
    """The union of every snapshot's rows, by address; one column per snapshot in the order given
    (and, for snapshots with aging passes, one per pass: columns())."""
    docs = [read(s) for s in snaps]
    seen: set = set()
    out = []
    for s in docs:
        out += columns(s, target, pid, maps, seen)
    if seen:  # a pass read late lies before the snapshot that listed it
        out.sort(key=lambda c: c[0])
    return grid_of(out)


def grid_of(columns: list[tuple[float, dict[RowKey, Cell]]]) -> Grid:
    """A Grid from (taken_at, cells) pairs, as the live view keeps them (cells computed once per snapshot).

    One row per address range (pid, start, end), named as the newest column that named it: a BPF
    region seen before /proc/PID/maps listed its mapping (read every MAPS_REFRESH seconds, or by
    the caller once) is "?" in its first columns and named after, and must stay one row."""
    names: dict[tuple[int, int, int], str] = {}
    for _, c in columns:
        for k in c:
            if k.name != "?" or (k.pid, k.start, k.end) not in names:
                names[(k.pid, k.start, k.end)] = k.name
    rows = tuple(sorted(RowKey(*r, n) for r, n in names.items()))
    by_range = [{(k.pid, k.start, k.end): v for k, v in c.items()} for _, c in columns]
    return Grid(rows, tuple(t for t, _ in columns),
                tuple(tuple(c.get((k.pid, k.start, k.end)) for c in by_range) for k in rows))


def glyph(cell: Cell | None, overlay: str = "heat") -> str:
    if cell is None:
        return " "
    if overlay == "heat":
        if cell.heat is None:
            return "?"
        return RAMP[0] if cell.heat <= 0 else RAMP[max(1, min(len(RAMP) - 1, round(cell.heat * (len(RAMP) - 1))))]
    if overlay == "node":
        return "?" if cell.node is None else str(cell.node % 10)
    if overlay == "lru":
        return {"anon": "a", "file": "f"}.get(cell.lru, "?")
    raise ValueError(f"unknown overlay {overlay!r}; one of: {', '.join(OVERLAYS)}")


LEGENDS = {
    "heat": f"heat: share of the row accessed in the interval, '{RAMP[0]}' none .. '{RAMP[-1]}' all; '?' not measured",
    "node": "node: the NUMA node holding most of the row; '?' unknown",
    "lru": "lru: 'a' anon, 'f' file (by majority)",
}


def render(g: Grid, overlay: str = "heat", columns: int | None = None, label_width: int = 48) -> str:
    """Text: a label column (hex start, mapping), then the latest `columns` snapshots, then a legend line."""
    if overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {overlay!r}; one of: {', '.join(OVERLAYS)}")
    first = 0 if columns is None else max(len(g.times) - columns, 0)
    lines = []
    for key, cells in zip(g.rows, g.cells):
        label = f"{key.start:#014x} {key.name}"
        if len(label) > label_width:
            label = label[:label_width - 1] + "~"
        lines.append(f"{label.ljust(label_width)} |{''.join(glyph(c, overlay) for c in cells[first:])}|")
    lines.append(LEGENDS[overlay] + "; blank: not resident; columns oldest to newest")
    return "\n".join(lines) + "\n"


# The live view (the TUI and --png) is render/view.py; its names are here too, so that one `HM.`
# namespace serves both halves.
from mglrud.render.view import *  # noqa: E402,F401,F403
