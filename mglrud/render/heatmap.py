"""Address x time heatmap of one target or process, from a series of /snapshot.json documents, as text.

Rows are address ranges labelled with the hex start and the mapping they belong
to; columns are snapshots, oldest left. Pure: the caller fetches the snapshots
(the live TUI of issue 8 polls the daemon; tests pass captured ones) and prints.

Where the rows come from depends on the source (docs/metrics.md "/snapshot.json"):
- procfs: one row per mapping; heat is the share of its resident bytes referenced
  in the latest interval (smaps `Referenced` after clear_refs).
- hotness (BPF): one row per region of `region_size`; heat is the share of the
  region accessed in the latest aging. The mapping name comes from the procfs part
  of the same snapshot where that source runs too, else "?".

Overlays: `heat` (a ramp from "." to "@"), `node` (the node holding most of the
row's resident bytes, as a digit), `lru` ("a" anon, "f" file, by majority).
A blank cell: the row did not exist (or was not resident) in that snapshot;
"?": it existed but no complete interval had been measured yet.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    heat: float | None  # share of the row accessed in the latest interval, 0..1; None: not measured yet
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


def procfs_cells(snap: dict, target: str | None = None, pid: int | None = None) -> dict[RowKey, Cell]:
    out = {}
    for p in (snap.get("procfs") or {}).get("processes", ()):
        if (target is not None and p["target"] != target) or (pid is not None and p["pid"] != pid):
            continue
        for m in p["mappings"]:
            res, acc = m["resident_bytes"], m["accessed_bytes"]
            heat = None if acc is None else (min(acc / res, 1.0) if res else 0.0)
            node = _majority({int(n): b for n, b in m["node_bytes"].items()})
            out[RowKey(p["pid"], int(m["start"], 16), int(m["end"], 16), m["name"])] = Cell(
                heat, node, _majority({"anon": m["anon_bytes"], "file": m["file_bytes"]}))
    return out


def hotness_cells(snap: dict, target: str | None = None, pid: int | None = None) -> dict[RowKey, Cell]:
    hot = snap.get("hotness")
    if not hot:
        return {}
    size = hot["region_size"]
    maps = sorted(procfs_cells(snap))  # names only: any target, any pid
    regions: dict[tuple[int, int], list[dict]] = {}
    for t in hot["targets"]:
        if target is not None and t["name"] != target:
            continue
        for r in t["regions"]:
            if pid is None or r["tgid"] == pid:
                regions.setdefault((r["tgid"], r["start"]), []).append(r)
    out = {}
    for (tgid, start), rs in regions.items():
        name = next((k.name for k in maps if k.pid == tgid and k.start < start + size and start < k.end), "?")
        nodes: dict[int, int] = {}
        lrus: dict[str, int] = {}
        for r in rs:  # residency where read, else what was accessed, to say where the row lives
            b = r["resident_bytes"] or r["accessed_bytes_total"]
            nodes[r["node"]] = nodes.get(r["node"], 0) + b
            lrus[r["lru"]] = lrus.get(r["lru"], 0) + b
        heat = min(sum(r["accessed_bytes"] for r in rs) / size, 1.0)
        out[RowKey(tgid, start, start + size, name)] = Cell(heat, _majority(nodes), _majority(lrus))
    return out


def grid(snaps: list[dict], target: str | None = None, pid: int | None = None) -> Grid:
    """The union of every snapshot's rows, by address; one column per snapshot in the order given."""
    cols = [{**procfs_cells(s, target, pid), **hotness_cells(s, target, pid)} for s in snaps]
    rows = tuple(sorted({k for c in cols for k in c}))
    return Grid(rows, tuple(s.get("taken_at", 0.0) for s in snaps),
                tuple(tuple(c.get(k) for c in cols) for k in rows))


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
    "heat": f"heat: share of the row accessed in the interval, '{RAMP[0]}' none .. '{RAMP[-1]}' all; '?' not measured yet",
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
