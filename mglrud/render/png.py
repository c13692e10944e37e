"""The heatmap of `mglrud heatmap --png FILE` as an image (Pillow, Debian's python3-pil).

The same view as the live TUI (render/heatmap.py: aggregation columns, address
window, bands), one cell per band and interval, coloured by the overlay, with
the hex address and mapping name of each band on the left and a legend below.
Pure: returns a PIL Image; the caller saves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mglrud.render import heatmap as HM

CELL_W, CELL_H = 12, 14
PAD = 6
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
# heat0 (nothing accessed) .. heat8 (all of it): dark blue to red, then the hot colour.
HEAT = ((20, 30, 90), (35, 60, 140), (40, 110, 180), (40, 160, 170), (90, 190, 110),
        (180, 200, 60), (240, 180, 40), (240, 110, 30), (220, 20, 20))
HOT = HEAT[-1]
COLOURS = {f"heat{i}": c for i, c in enumerate(HEAT)}
COLOURS.update({f"node{i}": c for i, c in enumerate(((60, 120, 200), (230, 140, 30), (60, 170, 80), (190, 60, 160),
                                                     (120, 120, 120), (40, 190, 190), (200, 200, 40), (150, 90, 40)))})
COLOURS.update({"anon": (200, 60, 60), "file": (60, 110, 200), "unknown": (190, 190, 190), "blank": BACKGROUND})


@dataclass(frozen=True)
class Drawn:
    """The image and where its cells are: band r, column c is the box at cell_box(r, c)."""

    image: Image.Image
    bands: tuple[HM.Band, ...]
    columns: int
    x0: int  # left edge of column 0
    top: int  # top edge of band 0

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x, y = self.x0 + column * CELL_W, self.top + row * CELL_H
        return x, y, x + CELL_W - 1, y + CELL_H - 2

    def pnginfo(self) -> PngInfo:
        """The layout as a PNG text chunk `mglrud-layout` (JSON), so a reader can find each band's cells."""
        info = PngInfo()
        info.add_text("mglrud-layout", json.dumps({
            "x0": self.x0, "top": self.top, "cell_width": CELL_W, "cell_height": CELL_H, "columns": self.columns,
            "bands": [{"pid": b.pid, "start": b.start, "end": b.end, "name": b.name, "rows": b.count}
                      for b in self.bands]}))
        return info


def read_newest_cells(path) -> tuple[dict, dict[int, tuple[int, int, int]]]:
    """Read back a PNG that Drawn wrote with its pnginfo(): (the layout, {band start: the RGB
    at the centre of the band's newest cell}). Tests and bug reports use it to check the picture."""
    img = Image.open(path)
    layout = json.loads(img.text["mglrud-layout"])
    rgb = img.convert("RGB")
    x = layout["x0"] + (layout["columns"] - 1) * layout["cell_width"] + layout["cell_width"] // 2
    return layout, {b["start"]: rgb.getpixel((x, layout["top"] + i * layout["cell_height"] + layout["cell_height"] // 2))
                    for i, b in enumerate(layout["bands"])}


def draw(g: HM.Grid, view: HM.View, title: str, max_rows: int = 256, max_columns: int = 240) -> Drawn:
    """One cell per band x column (the newest `max_columns` columns), labels on the left."""
    lo, hi = view.zoom[-1] if view.zoom else (None, None)
    agg = HM.aggregate(HM.window(g, lo, hi), view.aggregate)
    bs, cells = HM.bands(agg, max_rows)
    first = max(len(agg.times) - max_columns, 0)
    ncols = len(agg.times) - first
    font = ImageFont.load_default()
    pids = len({r.pid for r in g.rows})
    labels = [HM.label(b, 60, pids).rstrip() for b in bs]
    lw = max([font.getbbox(t)[2] for t in labels] + [40])
    legend_w = sum(font.getbbox(t)[2] + 2 if a == "legend" else CELL_W + 2 for a, t in HM.legend(view.overlay))
    width = max(PAD + lw + PAD + ncols * CELL_W + PAD, PAD * 2 + legend_w, PAD * 2 + font.getbbox(title)[2])
    top = PAD + CELL_H + PAD
    height = top + max(len(bs), 1) * CELL_H + PAD + 2 * CELL_H + PAD
    img = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((PAD, PAD), title, fill=TEXT, font=font)
    x0 = PAD + lw + PAD
    for r, (text, cs) in enumerate(zip(labels, cells)):
        y = top + r * CELL_H
        d.text((PAD, y + 1), text, fill=TEXT, font=font)
        for c, cell in enumerate(cs[first:]):
            x = x0 + c * CELL_W
            d.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 2), fill=COLOURS[HM.style(cell, view.overlay)])
    if not bs:
        d.text((PAD, top), "no rows: nothing resident in the snapshots", fill=TEXT, font=font)
    y = top + max(len(bs), 1) * CELL_H + PAD
    x = PAD
    for attr, t in HM.legend(view.overlay):  # the legend's glyphs as swatches in their colours
        if attr != "legend":
            d.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 2), fill=COLOURS[attr], outline=TEXT)
            x += CELL_W + 2
        else:
            d.text((x, y + 1), t, fill=TEXT, font=font)
            x += font.getbbox(t)[2] + 2
    d.text((PAD, y + CELL_H + 2), f"{ncols} x {view.aggregate:g}s columns, newest right", fill=TEXT, font=font)
    return Drawn(img, bs, ncols, x0, top)
