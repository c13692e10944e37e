"""`mglrud heatmap`: the live address x time heatmap in a terminal (urwid), or written once as a PNG.

This module is the I/O edge only: where snapshots come from (a running daemon's
/snapshot.json, or an in-process session of the daemon's own cycle), /proc/PID/maps
for mapping names, the key loop and the screen. Everything drawn is computed by
the pure functions of mglrud/render/heatmap.py (text and attributes) and
mglrud/render/png.py (the image).

Two modes, and the status line says which:
- attached: polls GET /snapshot.json of `mglrud run` (default http://127.0.0.1:9746).
  The aging interval is the daemon's (its config): the aging keys are refused
  with a message, since a viewer must not reconfigure a shared daemon behind
  its operator's back (`aging.interval` + `systemctl reload mglrud` changes it).
- own session: no daemon reachable (or --own): runs the daemon's Engine
  (mglrud/cycle.py, sources chosen as `sources: auto` would) for just this pid or
  target, and the aging keys change its schedule directly.

urwid (Debian's python3-urwid) draws the screen: it handles resize, input
decoding and colour/monochrome palettes, so this module only maps keys to view
changes. Cells always carry a glyph, so the map reads the same without colour.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

from mglrud import client
from mglrud import optional
from mglrud.render import heatmap as HM

AGING_STEPS = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)
AGGREGATE_STEPS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HISTORY = 3000  # snapshots kept: 50 minutes at one a second
MAPS_REFRESH = 10.0  # seconds between re-reads of /proc/PID/maps


class HeatmapError(Exception):
    """Bad input (unknown pid or target, unwritable path); the CLI prints it as one line."""


# ---------------------------------------------------------------- where snapshots come from

class DaemonFeed:
    """A running `mglrud run`: its latest /snapshot.json on each poll."""

    mode = "attached"

    def __init__(self, url: str):
        self.url = url
        self.describe = f"attached to daemon {url}"

    def poll(self) -> dict:
        return client.fetch_snapshot(self.url, timeout=5.0)

    def aging(self, snap: dict | None) -> str:
        spans = sorted({p["interval_seconds"] for p in ((snap or {}).get("procfs") or {}).get("processes", ())
                        if p["interval_seconds"] is not None})
        return "daemon's" + (f" (~{spans[-1]:.0f}s)" if spans else "")

    def set_aging(self, seconds: float) -> str:
        return ("aging interval unavailable when attached: it is the daemon's aging.interval "
                "(change its config and reload it)")

    def close(self) -> None:
        pass


class OwnSession:
    """The daemon's cycle (mglrud/cycle.py Engine) run in this process for one pid or target."""

    mode = "own session"

    def __init__(self, cfg, why: str, engine=None):
        from mglrud.cycle import Engine  # only here: attached mode needs no kernel access

        self.cfg = cfg
        self.engine = engine or Engine(cfg)
        self.first = True
        self.lock = threading.Lock()
        self.describe = f"own session ({'+'.join(self.engine.choice.active) or 'no source'}): {why}"

    @property
    def interval(self) -> float:
        return self.cfg.targets[0].interval

    def poll(self) -> dict:
        from mglrud import report

        with self.lock:
            # Like the daemon: the first cycle only reads, later ones age what is due.
            snap = self.engine.cycle(age=not self.first)
            self.first = False
        return report.to_dict(snap)

    def aging(self, snap: dict | None) -> str:
        return f"{self.interval:g}s"

    def set_aging(self, seconds: float) -> str:
        """A new aging interval for every target of the session, due at most `seconds` from now."""
        with self.lock:
            targets = tuple(dataclasses.replace(t, interval=seconds) for t in self.cfg.targets)
            self.cfg = dataclasses.replace(self.cfg, targets=targets,
                                           aging=dataclasses.replace(self.cfg.aging, interval=seconds))
            self.engine.configure(self.cfg)
            # configure() keeps the schedule; a shorter interval should not wait out the old one.
            e, now = self.engine, self.engine.clock()
            for path, due in e.next_due.items():
                e.next_due[path] = min(due, now + seconds)
            if e.procfs is not None:
                for name, due in e.procfs.next_due.items():
                    e.procfs.next_due[name] = min(due, now + seconds)
        return f"aging interval now {seconds:g}s"

    def close(self) -> None:
        if self.engine.bpf is not None:
            self.engine.bpf.close()


def own_config(args, aging: float):
    """The session's config: --config (or the defaults) with only the asked target, aged every `aging` s."""
    from mglrud.config import ConfigError, Target, load

    try:
        cfg = load(args.config)
    except ConfigError as e:
        raise HeatmapError(f"config: {e}") from None
    if args.pid is not None:
        targets = (Target(name=f"pid:{args.pid}", kind="pid", value=args.pid, interval=aging,
                          can_swap=cfg.aging.can_swap, force_scan=cfg.aging.force_scan),)
    else:
        found = [t for t in cfg.targets if t.name == args.target]
        if not found or args.config is None:
            raise HeatmapError(f"no daemon to ask, and no target {args.target!r} in "
                               f"{args.config or 'the built-in defaults'}: pass the daemon's --config, or --pid")
        targets = (dataclasses.replace(found[0], interval=aging),)
    return dataclasses.replace(cfg, targets=targets, aging=dataclasses.replace(cfg.aging, interval=aging))


def open_feed(args):
    """Attached when the daemon answers (unless --own), else an own session; checks pid/target."""
    if args.pid is not None and not Path(f"/proc/{args.pid}").is_dir():
        raise HeatmapError(f"no process {args.pid}")
    why = "--own"
    if not args.own:
        feed = DaemonFeed(args.url)
        try:
            first = feed.poll()
        except client.FetchError:
            why = f"no daemon at {args.url}"
        else:
            check_daemon_has(first, args.target, args.pid)
            return feed, first
    return OwnSession(own_config(args, args.aging), why), None


def check_daemon_has(snap: dict, target: str | None, pid: int | None) -> None:
    names = {t["name"] for t in snap.get("targets", ())}
    names |= {t["name"] for t in (snap.get("procfs") or {}).get("targets", ())}
    names |= {t["name"] for t in (snap.get("hotness") or {}).get("targets", ())}
    known = ", ".join(sorted(names)) or "none"
    if target is not None and target not in names:
        raise HeatmapError(f"the daemon has no target {target!r}; its targets: {known}")
    if pid is not None:
        pids = {p["pid"] for p in (snap.get("procfs") or {}).get("processes", ())}
        pids |= {g for t in (snap.get("hotness") or {}).get("targets", ()) for g in t["tgids"]}
        if pid not in pids:
            raise HeatmapError(f"the daemon has no data for pid {pid} (not a process of its targets: {known}); "
                               f"add it to its config, or run this with --own")


class History:
    """The snapshots seen, each reduced once to its cells; mapping names of BPF regions from /proc/PID/maps."""

    def __init__(self, target: str | None, pid: int | None):
        self.target, self.pid = target, pid
        self.columns: collections.deque = collections.deque(maxlen=HISTORY)
        self.maps: dict[int, list[tuple[int, int, str]]] = {}
        self.maps_at = -MAPS_REFRESH
        self.latest: dict | None = None

    def add(self, snap: dict) -> bool:
        t = snap.get("taken_at", 0.0)
        if self.columns and self.columns[-1][0] >= t:
            return False  # the daemon has not published a new one since
        if snap.get("hotness") and time.monotonic() - self.maps_at >= MAPS_REFRESH:
            self.maps = client.hotness_maps(snap, self.target, self.pid)
            self.maps_at = time.monotonic()
        self.columns.append((t, HM.cells(snap, self.target, self.pid, self.maps)))
        self.latest = snap
        return True

    def grid(self, since: float | None = None) -> HM.Grid:
        """The snapshots taken at or after `since` (all of them: None) as a Grid."""
        return HM.grid_of([c for c in self.columns if since is None or c[0] >= since])


class Poller(threading.Thread):
    """Polls the feed every `period` seconds in the background, so keys never wait for the source."""

    def __init__(self, feed, period: float):
        super().__init__(name="mglrud-heatmap-poll", daemon=True)
        self.feed, self.period = feed, period
        self.out: collections.deque = collections.deque()
        self.error = ""
        self.paused = threading.Event()
        self.stopped = threading.Event()
        self.lock = threading.Lock()  # pausing and delivering a poll do not interleave

    def run(self) -> None:
        while not self.stopped.is_set():
            if not self.paused.is_set():
                try:
                    snap = self.feed.poll()
                    self.error = ""
                    with self.lock:  # a poll in flight when pause was pressed is dropped
                        if not self.paused.is_set():
                            self.out.append(snap)
                except Exception as e:  # shown in the status line; the next poll may work
                    self.error = f"{type(e).__name__}: {e}" if not isinstance(e, client.FetchError) else str(e)
            self.stopped.wait(self.period)


# ---------------------------------------------------------------- the terminal UI

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
    def __init__(self, feed, first: dict | None, args, colour: bool):
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
        since = None if latest is None else latest.get("taken_at", 0.0) - (cols + 1) * self.view.aggregate
        g = self.history.grid(since)
        f = HM.frame(g, self.view, cols, max(3, rows - 4))
        self.bands = f.bands
        if self.bands and self.view.cursor >= len(self.bands):
            self.view = dataclasses.replace(self.view, cursor=len(self.bands) - 1)
            f = HM.frame(g, self.view, cols, max(3, rows - 4))
        age = None if latest is None else max(0.0, time.time() - latest.get("taken_at", 0.0))
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


# ---------------------------------------------------------------- --png

def check_writable(path: str) -> None:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise HeatmapError(f"{path} is a directory; give a file name such as heatmap.png")
    if not parent.is_dir():
        raise HeatmapError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise HeatmapError(f"cannot write {path}: permission denied")


def png_main(args, feed, first: dict | None) -> int:
    from mglrud.render import png

    history = History(args.target, args.pid)
    if first is not None:
        history.add(first)
    # Until --columns aggregation intervals hold measured data (the first read of a fresh
    # session measures nothing yet); bounded for a source that never delivers.
    deadline = time.monotonic() + args.columns * args.aggregate + 3 * args.aging + 60
    while True:
        agg = HM.aggregate(history.grid(), args.aggregate)
        measured = sum(1 for i in range(len(agg.times)) if any(c[i] is not None and c[i].heat is not None
                                                               for c in agg.cells))
        if measured >= args.columns:
            break
        if time.monotonic() > deadline:
            raise HeatmapError(f"only {measured} of {args.columns} intervals measured before giving up")
        time.sleep(min(1.0, args.aggregate))
        history.add(feed.poll())
    g = history.grid()
    # Drop the leading intervals that measured nothing (a fresh session's first read).
    view = HM.View(overlay=args.overlay, aggregate=args.aggregate)
    agg = HM.aggregate(g, args.aggregate)
    keep = [i for i in range(len(agg.times)) if any(c[i] is not None and c[i].heat is not None for c in agg.cells)]
    first_t = agg.times[keep[-args.columns]] if keep else 0.0
    cols = [(t, c) for t, c in history.columns if t >= first_t]
    who = f"target {args.target}" if args.target is not None else f"pid {args.pid}"
    title = (f"mglrud heatmap: {who}, overlay {args.overlay}, {feed.mode}, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(cols[-1][0] if cols else time.time()))}")
    drawn = png.draw(HM.grid_of(cols), view, title)
    try:
        drawn.image.save(args.png, format="PNG", pnginfo=drawn.pnginfo())
    except OSError as e:
        raise HeatmapError(f"cannot write {args.png}: {e.strerror or e}") from None
    print(f"wrote {args.png}: {len(drawn.bands)} rows x {drawn.columns} columns", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- command line

def add_parser(sub) -> None:
    hm = sub.add_parser(
        "heatmap", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="live address x time heatmap of one target or process (or --png FILE)",
        description="Live address x time heatmap: rows are address ranges (hex start, mapping), columns "
                    "aggregation intervals, newest right. Reads a running daemon's /snapshot.json; with none "
                    "reachable (or --own) runs its own session of the daemon's sources for just this pid/target. "
                    "The status line says which.",
        epilog="keys: q quit; o next overlay, 1 heat, 2 node, 3 lru (anon/file); [ ] shorter/longer "
               "aggregation interval; a A shorter/longer aging interval (own session only: attached, the "
               "aging interval is the daemon's config); up/down (k/j) select a row; z or enter zoom into the "
               "selected row's address range; Z, u or backspace zoom out; p or space pause.\n"
               "Without colour (NO_COLOR, TERM=dumb, --no-color) the glyphs carry the map: heat . : - = + * # % @, "
               "node digits, a/f for anon/file, ? not measured yet, blank not resident.\n"
               "A column merges the snapshots of its interval (hottest wins); an interval without one gets no "
               "column. Exit status: 0, or 1 with one line (no such process, target or pid unknown to the "
               "daemon, unwritable --png path).")
    who = hm.add_mutually_exclusive_group(required=True)
    who.add_argument("--target", metavar="NAME", help="a configured target's name")
    who.add_argument("--pid", type=int, metavar="PID", help="one process")
    hm.add_argument("--url", default=client.DEFAULT_URL, help=f"the daemon's address (default {client.DEFAULT_URL})")
    hm.add_argument("--own", action="store_true", help="run an own session even if a daemon answers")
    hm.add_argument("--config", "-c", metavar="FILE",
                    help="own session: config to take the target (--target) and source settings from")
    hm.add_argument("--aging", type=_seconds, default=5.0, metavar="SECONDS",
                    help="own session: the aging interval to start with (default 5)")
    hm.add_argument("--aggregate", type=_seconds, default=2.0, metavar="SECONDS",
                    help="seconds per column to start with (default 2)")
    hm.add_argument("--poll", type=_seconds, default=1.0, metavar="SECONDS",
                    help="seconds between reads of the daemon or cycles of the own session (default 1)")
    hm.add_argument("--no-color", action="store_true", help="glyphs only (also NO_COLOR or TERM=dumb)")
    hm.add_argument("--png", metavar="FILE", help="write the heatmap as a PNG image and exit")
    hm.add_argument("--columns", type=int, default=1, metavar="N",
                    help="--png: aggregation intervals to show (default 1: the latest snapshot)")
    hm.add_argument("--overlay", choices=HM.OVERLAYS, default="heat", help="--png: the overlay (default heat)")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600 seconds, got {text!r}")
    return v


def main(args) -> int:
    """0 done; 1 bad input or no data (one line on stderr)."""
    feed = None
    try:
        if args.png:
            check_writable(args.png)
            if args.columns < 1:
                raise HeatmapError(f"--columns must be at least 1, got {args.columns}")
        if problem := optional.missing("PIL" if args.png else "urwid"):  # before anything is aged
            raise HeatmapError(problem)
        feed, first = open_feed(args)
        if args.png:
            return png_main(args, feed, first)
        if not sys.stdout.isatty():
            raise HeatmapError("the live heatmap needs a terminal; use --png FILE for an image")
        colour = not (args.no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM", "dumb") == "dumb")
        return App(feed, first, args, colour).run()
    except (HeatmapError, client.FetchError) as e:
        print(f"mglrud: heatmap: {e}", file=sys.stderr)
        return 1
    finally:
        if feed is not None and args.png:
            feed.close()
