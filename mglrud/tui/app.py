"""The live heatmap's terminal UI (urwid): draws frames the pure renderer computes, maps keys to view changes.

urwid (Debian's python3-urwid) handles resize, input decoding and
colour/monochrome palettes; cells always carry a glyph, so the map reads the
same without colour.
"""

from __future__ import annotations

import dataclasses
import time

from mglrud.render import heatmap as HM
from mglrud.tui.feeds import History, Poller

AGING_STEPS = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)
AGGREGATE_STEPS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)


PALETTE = [  # (name, foreground, background, monochrome): glyphs carry the meaning without colour
    ("header", "bold", "", "bold"),
    ("label", "", "", ""),
    ("cursor", "black", "light gray", "standout"),
    ("border", "dark gray", "", ""),
    ("blank", "", "", ""),
    ("legend", "", "", ""),
    ("status", "black", "light gray", "standout"),
    ("keys", "dark gray", "", ""),
    ("unknown", "dark gray", "", ""),
    ("heat0", "dark blue", "", ""), ("heat1", "dark cyan", "", ""), ("heat2", "light cyan", "", ""),
    ("heat3", "dark green", "", ""), ("heat4", "light green", "", ""), ("heat5", "yellow", "", ""),
    ("heat6", "brown", "", ""), ("heat7", "light red", "", "bold"), ("heat8", "white,bold", "dark red", "bold"),
    ("node0", "light blue", "", ""), ("node1", "yellow", "", ""), ("node2", "light green", "", ""),
    ("node3", "light magenta", "", ""), ("node4", "light gray", "", ""), ("node5", "light cyan", "", ""),
    ("node6", "brown", "", ""), ("node7", "light red", "", ""),
    ("anon", "light red", "", ""), ("file", "light blue", "", ""),
]


class App:
    def __init__(self, feed, first, args, colour: bool):
        import urwid

        self.urwid = urwid
        self.feed = feed
        self.who = f"target {args.target}" if args.target is not None else f"pid {args.pid}"
        self.view = HM.View(overlay="heat", aggregate=args.aggregate)
        self.history = History(args.target, args.pid)
        if first is not None:
            self.history.add(first)
        self.poller = Poller(feed, args.poll)
        self.message = ""
        self.bands: tuple[HM.Band, ...] = ()
        self.drawn = 0.0  # monotonic time of the latest redraw
        self.text = urwid.Text("", wrap="clip")
        self.screen = urwid.raw_display.Screen()
        self.screen.set_terminal_properties(colors=16 if colour else 1)
        self.loop = urwid.MainLoop(urwid.Filler(self.text, valign="top"), PALETTE, screen=self.screen,
                                   unhandled_input=self.key, handle_mouse=False)

    def run(self) -> int:
        self.poller.start()
        self.loop.set_alarm_in(0, self.tick)
        try:
            self.loop.run()
        finally:
            self.poller.stopped.set()
            self.poller.join(timeout=10)
            self.feed.close()
        return 0

    def tick(self, loop, _data) -> None:
        new = False
        while self.poller.out:
            new = self.history.add(self.poller.out.popleft()) or new
        # New data, or once a second for the data's age (and a resized terminal).
        if new or time.monotonic() - self.drawn >= 1.0:
            self.redraw()
        loop.set_alarm_in(0.25, self.tick)

    def redraw(self) -> None:
        self.drawn = time.monotonic()
        cols, rows = self.screen.get_cols_rows()
        latest = self.history.latest
        # Only what fits on screen: at most one column a character, one interval each (+1 for alignment).
        since = None if latest is None else latest.taken_at - (cols + 1) * self.view.aggregate
        g = self.history.grid(since)
        f = HM.frame(g, self.view, cols, max(3, rows - 4))
        self.bands = f.bands
        if self.bands and self.view.cursor >= len(self.bands):
            self.view = dataclasses.replace(self.view, cursor=len(self.bands) - 1)
            f = HM.frame(g, self.view, cols, max(3, rows - 4))
        age = None if latest is None else max(0.0, time.time() - latest.taken_at)
        source, shown = HM.status(self.feed.describe, self.who, self.view, self.feed.aging(latest),
                                  self.poller.paused.is_set(), age)
        message = self.poller.error or self.message
        markup = []
        for runs in [f.header] + f.body + [f.legend]:
            markup += [r for r in runs if r[1]] + ["\n"]
        markup += [("status", source.ljust(cols)[:cols]), "\n", ("status", shown.ljust(cols)[:cols]), "\n",
                   ("label", message[:cols]), "\n",
                   ("keys", HM.KEYS[:cols])]
        self.text.set_text(markup)

    def key(self, k) -> None:
        v = self.view
        if k in ("q", "Q"):
            raise self.urwid.ExitMainLoop()
        elif k == "o":
            self.view = dataclasses.replace(v, overlay=HM.OVERLAYS[(HM.OVERLAYS.index(v.overlay) + 1) % 3])
        elif k in ("1", "2", "3"):
            self.view = dataclasses.replace(v, overlay=HM.OVERLAYS[int(k) - 1])
        elif k in ("[", "]"):
            self.view = dataclasses.replace(v, aggregate=HM.step(AGGREGATE_STEPS, v.aggregate, k == "]"))
            self.message = f"aggregation interval now {self.view.aggregate:g}s"
        elif k in ("a", "A"):
            current = getattr(self.feed, "interval", AGING_STEPS[0])
            self.message = self.feed.set_aging(HM.step(AGING_STEPS, current, k == "A"))
        elif k in ("up", "k"):
            self.view = dataclasses.replace(v, cursor=max(0, v.cursor - 1))
        elif k in ("down", "j"):
            self.view = dataclasses.replace(v, cursor=min(max(len(self.bands) - 1, 0), v.cursor + 1))
        elif k in ("z", "enter"):
            self.view, self.message = HM.zoom_in(v, self.bands)
        elif k in ("Z", "backspace", "u"):
            self.view, self.message = HM.zoom_out(v)
        elif k in ("p", " "):
            if self.poller.paused.is_set():
                self.poller.paused.clear()
                self.message = "resumed"
            else:
                with self.poller.lock:
                    self.poller.paused.set()
                    self.poller.out.clear()  # polled before the key, not yet drawn: not drawn while paused
                self.message = "paused: no new columns" + (", no aging" if self.feed.mode == "own session" else "")
        else:
            return
        self.redraw()
