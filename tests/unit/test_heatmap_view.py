"""The live heatmap's pure parts (render/heatmap.py View/frame, render/png.py) from captured snapshots:
the golden /proc snapshot (tests/unit/golden, from tests/fixtures/procfs) and the replayed BPF dumps
(tests/fixtures/bpf). Overlays, aggregation columns, zoom, the status line and the PNG's pixels."""

import json

import pytest
from PIL import Image

from fixture_snapshots import procfs_snapshot
from mglrud.render import heatmap as HM
from mglrud.render import png
from tests.bpf_replay import META
from test_heatmap_text import _bpf_series, _first_interval

PROCFS = {"taken_at": 100.0, "procfs": procfs_snapshot()}
PID = PROCFS["procfs"]["processes"][0]["pid"]
HOT, COLD, FILE, MEMFD = 0x7fb73b0bf000, 0x7fb73b4c0000, 0x7fb73ac00000, 0x7fb73a800000
REGION = 2 << 20


def rows_of(text: str) -> dict[int, str]:
    """Body lines of a frame's text by their row's start address."""
    return {int(l.split()[0], 16): l for l in text.splitlines()[1:-1] if l.startswith("0x")}


def newest(line: str) -> str:
    return line.rstrip()[-2]  # the glyph before the closing border


def series(n: int, start: float = 100.0, step: float = 1.0):
    """n copies of the golden snapshot, one per `step` seconds."""
    out = []
    for i in range(n):
        s = json.loads(json.dumps(PROCFS))
        s["taken_at"] = start + i * step
        out.append(s)
    return out


# ---------------------------------------------------------------- overlays

def test_heat_overlay_from_the_procfs_capture():
    g = HM.grid([_first_interval(PROCFS), PROCFS], pid=PID)
    f = HM.frame(g, HM.View(aggregate=1), 120, 200)
    rows = rows_of(HM.text(f))
    assert len(rows) == len(g.rows) and all(b.count == 1 for b in f.bands)  # room for every mapping
    assert rows[HOT].endswith("?@|") and "[anon]" in rows[HOT]  # '?': the first read measured nothing
    assert rows[COLD].endswith("?.|")
    assert "/tmp/tmp4hc0cqew/data" in rows[FILE]
    assert HM.text(f).splitlines()[-1].startswith("heat (hottest part of band/interval)")
    # every cell's attribute is its heat step, so colour and glyph agree
    runs = dict((a, t) for a, t in f.body[f.bands.index(next(b for b in f.bands if b.start == HOT))])
    assert runs.get("heat8") == "@" and runs.get("unknown") == "?"


def test_node_and_lru_overlays():
    g = HM.grid([PROCFS], pid=PID)
    node = rows_of(HM.text(HM.frame(g, HM.View(overlay="node"), 120, 200)))
    assert all(newest(l) == "0" for l in node.values())  # captured on one node
    lru = rows_of(HM.text(HM.frame(g, HM.View(overlay="lru"), 120, 200)))
    assert newest(lru[FILE]) == "f" and newest(lru[MEMFD]) == "a" and newest(lru[HOT]) == "a"  # memfd is shmem
    f = HM.frame(g, HM.View(overlay="lru"), 120, 200)
    assert ("file", "f") in f.body[[b.start for b in f.bands].index(FILE)]
    assert [t for a, t in HM.legend("lru") if a in ("anon", "file")] == ["a", "f"]
    with pytest.raises(ValueError, match="unknown overlay"):
        HM.frame(g, HM.View(overlay="colour"), 120, 200)


def test_bpf_rows_hot_block_hot_in_every_overlay(tmp_path):
    snaps = _bpf_series(tmp_path)
    lo, hot_end, end = META["address"], META["address"] + META["hot"], META["address"] + META["size"]
    maps = {META["pid"]: [(lo, end, "[anon]")]}
    g = HM.grid(snaps, pid=META["pid"], maps=maps)
    rows = rows_of(HM.text(HM.frame(g, HM.View(aggregate=1), 160, 200)))
    inside = [a for a in rows if lo <= a and a + REGION <= hot_end]
    cold = [a for a in rows if hot_end + REGION <= a and a + REGION <= end]
    assert inside and cold
    assert all(newest(rows[a]) == "@" and rows[a].split()[1] == "[anon]" for a in inside)  # named from maps
    assert all(newest(rows[a]) in ". " for a in cold)
    lru = rows_of(HM.text(HM.frame(g, HM.View(overlay="lru", aggregate=1), 160, 200)))
    node = rows_of(HM.text(HM.frame(g, HM.View(overlay="node", aggregate=1), 160, 200)))
    assert all(newest(lru[a]) == "a" and newest(node[a]) == "0" for a in inside)


# ---------------------------------------------------------------- columns and aggregation

def test_aggregation_buckets_snapshots_and_keeps_the_hottest():
    snaps = series(10)
    for s in snaps[:5]:  # the hot mapping measured cold for the first five seconds
        m = next(m for m in s["procfs"]["processes"][0]["mappings"] if int(m["start"], 16) == HOT)
        m["accessed_bytes"] = 0
    g = HM.grid(snaps, pid=PID)
    one = HM.frame(g, HM.View(aggregate=1), 120, 200)
    five = HM.frame(g, HM.View(aggregate=5), 120, 200)
    assert (one.columns, five.columns) == (10, 2)
    assert rows_of(HM.text(one))[HOT].endswith(" .....@@@@@|")
    assert rows_of(HM.text(five))[HOT].rstrip().endswith(".@|")
    seven = HM.aggregate(g, 7)  # 100..104 cold, 105..109 hot: [98,105) holds cold, [105,112) hot
    assert seven.times == (98.0, 105.0)
    assert HM.merge([None, HM.Cell(None, 0, "anon"), HM.Cell(0.5, 1, "file")]) == HM.Cell(0.5, 1, "file")
    assert HM.merge([None, None]) is None
    with pytest.raises(ValueError):
        HM.aggregate(g, 0)


def test_columns_scroll_newest_at_the_right_edge():
    g = HM.grid(series(200), pid=PID)
    f = HM.frame(g, HM.View(aggregate=1), 80, 200)
    line = rows_of(HM.text(f))[HOT]
    cells = line.split("|")[1]
    assert len(line) == 80 and set(cells) == {"@"}  # more columns than room: the newest fill the width
    short = rows_of(HM.text(HM.frame(HM.grid(series(3), pid=PID), HM.View(aggregate=1), 80, 200)))[HOT]
    assert short.split("|")[1].endswith("@@@") and short.split("|")[1].startswith(" ")


def test_steps_of_the_interval_ladders():
    ladder = (1.0, 2.0, 5.0, 10.0)
    assert HM.step(ladder, 2.0, True) == 5.0 and HM.step(ladder, 2.0, False) == 1.0
    assert HM.step(ladder, 10.0, True) == 10.0 and HM.step(ladder, 1.0, False) == 1.0
    assert HM.step(ladder, 3.0, True) == 5.0 and HM.step(ladder, 3.0, False) == 2.0


# ---------------------------------------------------------------- zoom

def test_a_small_screen_merges_rows_and_zoom_unmerges_them():
    g = HM.grid([_first_interval(PROCFS), PROCFS], pid=PID)
    f = HM.frame(g, HM.View(aggregate=1), 120, 10)  # 8 bands for the capture's 76 mappings
    assert len(f.bands) <= 8 and sum(b.count for b in f.bands) == len(g.rows)
    i = next(i for i, b in enumerate(f.bands) if b.start <= HOT < b.end)
    band = f.bands[i]
    assert band.count > 1 and f"+{band.count - 1}" in HM.text(f).splitlines()[1 + i]
    # a merged band is as hot as its hottest row
    assert newest(HM.text(f).splitlines()[1 + i]) == "@"
    view, msg = HM.zoom_in(HM.View(aggregate=1, cursor=i), f.bands)
    assert view.zoom == ((band.start, band.end),) and msg.startswith("zoomed into")
    z = HM.frame(g, view, 120, 10)
    assert all(band.start <= b.start and b.end <= band.end for b in z.bands)
    assert sum(b.count for b in z.bands) == band.count
    assert "[zoom " in HM.text(z).splitlines()[0]
    out, msg = HM.zoom_out(view)
    assert out.zoom == () and msg == "zoomed out"
    assert HM.zoom_out(out) == (out, "not zoomed")


def test_zoom_stops_at_one_row_and_window_filters_by_address():
    g = HM.grid([PROCFS], pid=PID)
    w = HM.window(g, HOT, HOT + 1)
    assert [k.start for k in w.rows] == [HOT]
    f = HM.frame(g, HM.View(zoom=((HOT, HOT + 1),)), 120, 10)
    assert len(f.bands) == 1 and HM.zoom_in(HM.View(zoom=((HOT, HOT + 1),)), f.bands)[1].startswith("one row only")
    empty = HM.frame(g, HM.View(zoom=((1, 2),)), 120, 10)
    assert "no rows in this address window" in HM.text(empty)


# ---------------------------------------------------------------- status line

def test_status_lines_say_mode_intervals_zoom_and_pause():
    v = HM.View(overlay="node", aggregate=5, zoom=((0x1000, 0x2000),))
    source, shown = HM.status("own session (procfs): no daemon at http://x", "pid 7", v, "3s", False, 1.2)
    assert source.split(" | ") == ["own session (procfs): no daemon at http://x", "pid 7", "data 1s old"]
    assert shown.split(" | ") == ["overlay node", "aging 3s", "aggregate 5s", "zoom 1: 0x1000-0x2000"]
    assert HM.status("attached", "pid 7", HM.View(), "daemon's", True, None)[0].endswith("PAUSED")
    assert HM.status("attached", "pid 7", HM.View(), "daemon's", False, None)[0].endswith("waiting for data")


# ---------------------------------------------------------------- PNG

def _pixel(d: png.Drawn, row: int, column: int):
    x0, y0, x1, y1 = d.cell_box(row, column)
    return d.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def test_png_rows_of_the_hot_block_are_the_hot_colour_and_no_others(tmp_path):
    snaps = _bpf_series(tmp_path)
    lo, hot_end = META["address"], META["address"] + META["hot"]
    g = HM.grid(snaps, pid=META["pid"])
    d = png.draw(g, HM.View(aggregate=1), "test")
    last = d.columns - 1
    hot_rows = [i for i, b in enumerate(d.bands) if lo <= b.start and b.end <= hot_end]
    assert hot_rows and all(b.count == 1 for b in d.bands)
    for i, b in enumerate(d.bands):
        colour = _pixel(d, i, last)
        if i in hot_rows:
            assert colour == png.HOT, (hex(b.start), colour)
        else:
            assert colour != png.HOT, (hex(b.start), colour)
    # saved with its layout, so a reader finds the same cells in the file
    path = tmp_path / "h.png"
    d.image.save(path, pnginfo=d.pnginfo())
    img = Image.open(path)
    layout = json.loads(img.text["mglrud-layout"])
    assert [b["start"] for b in layout["bands"]] == [b.start for b in d.bands]
    i = hot_rows[0]
    x = layout["x0"] + last * layout["cell_width"] + 2
    y = layout["top"] + i * layout["cell_height"] + 2
    assert img.convert("RGB").getpixel((x, y)) == png.HOT


def test_png_overlays_and_a_cold_mapping(tmp_path):
    g = HM.grid([PROCFS], pid=PID)
    heat = png.draw(g, HM.View(), "t")
    starts = [b.start for b in heat.bands]
    assert _pixel(heat, starts.index(HOT), 0) == png.HOT
    assert _pixel(heat, starts.index(COLD), 0) == png.HEAT[0]
    lru = png.draw(g, HM.View(overlay="lru"), "t")
    assert _pixel(lru, starts.index(FILE), 0) == png.COLOURS["file"]
    assert _pixel(lru, starts.index(HOT), 0) == png.COLOURS["anon"]
    node = png.draw(g, HM.View(overlay="node"), "t")
    assert all(_pixel(node, i, 0) == png.COLOURS["node0"] for i in range(len(node.bands)))


# ---------------------------------------------------------------- BPF heat between agings

def test_bpf_heat_is_the_latest_aging_pass_not_the_latest_cycle(tmp_path):
    snap = json.loads(json.dumps(_bpf_series(tmp_path)[-1]))
    lo, hot_end = META["address"], META["address"] + META["hot"]
    regions = [r for t in snap["hotness"]["targets"] for r in t["regions"]]
    for r in regions:  # a snapshot published between two agings: this cycle found nothing new
        r["accessed_bytes"] = 0
    cells = HM.hotness_cells(snap, pid=META["pid"])
    hot = [c for k, c in cells.items() if lo <= k.start and k.end <= hot_end]
    assert hot and all(c.heat == 1.0 for c in hot)
    # a younger generation than the newest find: the latest pass found nothing of this process
    newest = min(r["found"][0]["seconds_ago"] for r in regions if r["found"])
    snap["memcgs"] = [{"memcg_id": regions[0]["memcg_id"], "generations": [{"age_seconds": newest - 2 * HM.WALK}]}]
    assert all(c.heat == 0.0 for c in HM.hotness_cells(snap, pid=META["pid"]).values())
    # an older daemon's JSON without `found`: the cycle's deltas, as before
    for r in regions:
        del r["found"]
    assert all(c.heat == 0.0 for c in HM.hotness_cells(snap, pid=META["pid"]).values())
