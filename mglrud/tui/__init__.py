"""`mglrud heatmap`: the live address x time heatmap in a terminal (urwid), or written once as a PNG.

This package is the I/O edge only: feeds.py, where snapshots come from (a running
daemon's /snapshot.json, or an in-process session of the daemon's own cycle) and
/proc/PID/maps for mapping names; app.py, the key loop and the screen; here, the
command and --png. Everything drawn is computed by
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

"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mglrud import client, optional
from mglrud.render import heatmap as HM
from mglrud.tui.feeds import (DaemonFeed, HeatmapError, History, OwnSession, Poller,  # noqa: F401 (the package's API)
                              check_daemon_has, open_feed, own_config)

__all__ = ["DaemonFeed", "HeatmapError", "History", "OwnSession", "Poller", "check_daemon_has", "check_writable",
           "main", "open_feed", "own_config", "png_main"]


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


def png_main(args, feed, first) -> int:
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
    # Drop the leading intervals that measured nothing (a fresh session's first read), and the
    # trailing ones: the interval still running has no aging pass in it yet (BPF heat is per pass).
    view = HM.View(overlay=args.overlay, aggregate=args.aggregate)
    agg = HM.aggregate(g, args.aggregate)
    keep = [i for i in range(len(agg.times)) if any(c[i] is not None and c[i].heat is not None for c in agg.cells)]
    first_t = agg.times[keep[-args.columns]] if keep else 0.0
    end_t = agg.times[keep[-1]] + args.aggregate if keep else float("inf")
    cols = [(t, c) for t, c in history.columns if first_t <= t < end_t]
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
        from mglrud.tui.app import App  # urwid only for the live screen

        return App(feed, first, args, colour).run()
    except (HeatmapError, client.FetchError) as e:
        print(f"mglrud: heatmap: {e}", file=sys.stderr)
        return 1
    finally:
        if feed is not None and args.png:
            feed.close()
