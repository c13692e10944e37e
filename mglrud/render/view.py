"""The live heatmap's view: a Grid cut to an address window, bucketed into aggregation intervals
and merged into at most `height` bands, drawn as runs of (attribute, text). Pure; the TUI
(mglrud/tui/) and the PNG (render/png.py) draw the same View.
"""

from __future__ import annotations

from dataclasses import dataclass

from mglrud.render.heatmap import OVERLAYS, RAMP, Cell, Grid, glyph

__all__ = ["merge", "aggregate", "window", "Band", "bands", "style", "View", "Frame", "label", "legend", "frame",
           "text", "zoom_in", "zoom_out", "step", "status", "KEYS"]


# ---------------------------------------------------------------- the live view (mglrud heatmap)
#
# The TUI (mglrud/tui/) and the PNG (render/png.py) draw the same View: the grid's
# snapshots bucketed into aggregation intervals (columns), its rows cut to an address
# window (zoom) and merged into at most `height` bands. Every function here is pure.

def merge(cs: list[Cell | None]) -> Cell | None:
    """Several cells as one: the highest heat (a band or interval is as hot as its hottest
    part), node and lru of the latest present cell; None when none is present."""
    present = [c for c in cs if c is not None]
    if not present:
        return None
    heats = [c.heat for c in present if c.heat is not None]
    last = present[-1]
    return Cell(max(heats) if heats else None, last.node, last.lru)


def aggregate(g: Grid, interval: float) -> Grid:
    """Columns of `interval` seconds (aligned to multiples of it), each merging the snapshots
    taken in it; `times` become the intervals' starts. Gaps stay out: a column per interval
    that has at least one snapshot."""
    if interval <= 0:
        raise ValueError(f"aggregation interval must be above 0, got {interval}")
    buckets: dict[float, list[int]] = {}
    for i, t in enumerate(g.times):
        buckets.setdefault(t // interval * interval, []).append(i)
    times = tuple(sorted(buckets))
    return Grid(g.rows, times, tuple(tuple(merge([cs[i] for i in buckets[t]]) for t in times) for cs in g.cells))


def window(g: Grid, lo: int | None, hi: int | None) -> Grid:
    """Only the rows overlapping addresses [lo, hi) (no window: all)."""
    if lo is None or hi is None:
        return g
    keep = [i for i, k in enumerate(g.rows) if k.start < hi and lo < k.end]
    return Grid(tuple(g.rows[i] for i in keep), g.times, tuple(g.cells[i] for i in keep))


@dataclass(frozen=True)
class Band:
    """One drawn row: `count` consecutive grid rows merged (1 when the screen has room for each)."""

    pid: int
    start: int
    end: int  # the end of the last row merged
    name: str  # the first row's mapping
    count: int


def bands(g: Grid, height: int) -> tuple[tuple[Band, ...], tuple[tuple[Cell | None, ...], ...]]:
    """At most `height` bands of consecutive rows (by pid, address), as equal in size as can be."""
    n = len(g.rows)
    if n == 0 or height <= 0:
        return (), ()
    per = -(-n // height)  # ceil
    out, cells = [], []
    for i in range(0, n, per):
        rows = g.rows[i:i + per]
        out.append(Band(rows[0].pid, rows[0].start, max(r.end for r in rows if r.pid == rows[0].pid),
                        rows[0].name, len(rows)))
        cells.append(tuple(merge([g.cells[j][c] for j in range(i, i + len(rows))]) for c in range(len(g.times))))
    return tuple(out), tuple(cells)


def style(cell: Cell | None, overlay: str) -> str:
    """The attribute a cell is drawn with (colour in the TUI and the PNG): heat0..heat8,
    node0..node7, anon, file, unknown, or blank."""
    if cell is None:
        return "blank"
    if overlay == "heat":
        return "unknown" if cell.heat is None else f"heat{RAMP.index(glyph(cell, 'heat'))}"
    if overlay == "node":
        return "unknown" if cell.node is None else f"node{cell.node % 8}"
    return cell.lru if cell.lru in ("anon", "file") else "unknown"


@dataclass(frozen=True)
class View:
    """What the user chose: overlay, aggregation interval, zoom stack, selected band."""

    overlay: str = "heat"
    aggregate: float = 2.0
    zoom: tuple[tuple[int, int], ...] = ()  # address windows, innermost last
    cursor: int = 0  # index of the selected band


@dataclass(frozen=True)
class Frame:
    """A drawn view: every line a list of (attribute, text) runs; `bands` are the rows drawn."""

    header: list[tuple[str, str]]
    body: list[list[tuple[str, str]]]
    legend: list[tuple[str, str]]
    bands: tuple[Band, ...]
    columns: int  # columns with data in view (before cutting to the width)


def label(b: Band, width: int, pids: int) -> str:
    """`[pid:]0xSTART name [+N merged rows]`; a long name loses its head (a path's end says most)."""
    addr = (f"{b.pid}:" if pids > 1 else "") + f"{b.start:#x} "
    more = f" +{b.count - 1}" if b.count > 1 else ""
    room = width - len(addr) - len(more)
    name = b.name if len(b.name) <= room else "~" + b.name[len(b.name) - room + 1:] if room > 1 else ""
    return (addr + name + more)[:width].ljust(width)


def legend(overlay: str) -> list[tuple[str, str]]:
    """The key as runs: each glyph in its own attribute, then what it means."""
    if overlay == "heat":
        runs = [("legend", "heat (hottest part of band/interval): ")]
        runs += [(f"heat{i}", RAMP[i]) for i in range(len(RAMP))]
        return runs + [("legend", f" {RAMP[0]} none .. {RAMP[-1]} all accessed; "), ("unknown", "?"),
                       ("legend", " not measured; blank: not resident")]
    if overlay == "node":
        return [("legend", "NUMA node holding most of the row: "), ("node0", "0"), ("node1", "1"),
                ("node2", "2"), ("node3", "3"), ("legend", " ...; "), ("unknown", "?"), ("legend", " unknown")]
    return [("legend", "LRU by majority: "), ("anon", "a"), ("legend", " anon  "), ("file", "f"),
            ("legend", " file; "), ("unknown", "?"), ("legend", " unknown")]


def frame(g: Grid, view: View, width: int, height: int) -> Frame:
    """The heatmap in `width` x `height` characters: a header, up to height-2 bands, a legend.
    Columns are view.aggregate seconds each, newest at the right edge."""
    if view.overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {view.overlay!r}; one of: {', '.join(OVERLAYS)}")
    lo, hi = view.zoom[-1] if view.zoom else (None, None)
    agg = aggregate(window(g, lo, hi), view.aggregate)
    label_w = max(12, min(44, width // 3))
    ncols = max(1, width - label_w - 2)
    bs, cells = bands(agg, max(1, height - 2))
    first = max(len(agg.times) - ncols, 0)
    pids = len({r.pid for r in g.rows})
    span = f"{len(agg.times)} x {view.aggregate:g}s columns, newest right"
    header = [("header", ("address mapping" + (f"  [zoom {lo:#x}-{hi:#x}]" if view.zoom else "")).ljust(label_w)[:label_w]),
              ("header", " " + span[:ncols + 1])]
    body = []
    for i, (b, cs) in enumerate(zip(bs, cells)):
        runs = [("cursor" if i == view.cursor else "label", label(b, label_w, pids)), ("border", "|"),
                ("blank", " " * (ncols - len(cs[first:])))]  # newest at the right edge
        for c in cs[first:]:
            a, ch = style(c, view.overlay), glyph(c, view.overlay)
            if runs[-1][0] == a:
                runs[-1] = (a, runs[-1][1] + ch)
            else:
                runs.append((a, ch))
        runs.append(("border", "|"))
        body.append(runs)
    if not bs:
        body.append([("label", "no rows: nothing of this target/pid is resident in the snapshots yet" if not view.zoom
                      else "no rows in this address window")])
    return Frame(header, body, legend(view.overlay), bs, len(agg.times))


def text(f: Frame) -> str:
    """A Frame as plain text (no attributes): what a colourless terminal shows, and what tests read."""
    lines = [f.header] + f.body + [f.legend]
    return "\n".join("".join(t for _, t in runs).rstrip() for runs in lines) + "\n"


def zoom_in(view: View, bs: tuple[Band, ...]) -> tuple[View, str]:
    """Zoom into the selected band's address range; (new view, what happened, for the status line)."""
    if not bs:
        return view, "nothing to zoom into"
    b = bs[min(view.cursor, len(bs) - 1)]
    if len(bs) == 1 and b.count == 1:
        return view, "one row only: cannot zoom further"
    return View(view.overlay, view.aggregate, view.zoom + ((b.start, b.end),), 0), f"zoomed into {b.start:#x}-{b.end:#x}"


def zoom_out(view: View) -> tuple[View, str]:
    if not view.zoom:
        return view, "not zoomed"
    return View(view.overlay, view.aggregate, view.zoom[:-1], 0), "zoomed out"


def step(values: tuple[float, ...], current: float, up: bool) -> float:
    """The next larger (or smaller) value of a ladder such as 1s, 2s, 5s, ...; stays at the ends."""
    if up:
        return next((v for v in values if v > current), values[-1] if current < values[-1] else current)
    return next((v for v in reversed(values) if v < current), values[0] if current > values[0] else current)


def status(mode: str, who: str, view: View, aging: str, paused: bool, age_seconds: float | None) -> tuple[str, str]:
    """The two status lines: where the data comes from (mode, what, how fresh), then what is shown
    (overlay, intervals, zoom)."""
    fresh = "PAUSED" if paused else ("waiting for data" if age_seconds is None else f"data {age_seconds:.0f}s old")
    shown = [f"overlay {view.overlay}", f"aging {aging}", f"aggregate {view.aggregate:g}s"]
    if view.zoom:
        lo, hi = view.zoom[-1]
        shown.append(f"zoom {len(view.zoom)}: {lo:#x}-{hi:#x}")
    return " | ".join([mode, who, fresh]), " | ".join(shown)


KEYS = "q quit | o 1 2 3 overlay | [ ] aggregation | a A aging | up down select | z zoom in | Z zoom out | p pause"
