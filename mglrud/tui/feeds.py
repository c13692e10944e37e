"""Where the heatmap's snapshots come from: a running daemon, or an own session of its cycle.

The I/O edge of `mglrud heatmap` (mglrud/tui/): GET /snapshot.json of `mglrud
run`, or the daemon's Engine (mglrud/cycle.py) run in this process; the
snapshots seen, each reduced to its cells once (History); and the background
poller that keeps keys from ever waiting for a source.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
import time
from pathlib import Path

from mglrud import client
from mglrud.render import heatmap as HM
from mglrud.snapshot_json import SnapshotDoc, read

HISTORY = 3000  # snapshots kept: 50 minutes at one a second
MAPS_REFRESH = 10.0  # seconds between re-reads of /proc/PID/maps


class HeatmapError(Exception):
    """Bad input (unknown pid or target, unwritable path); the CLI prints it as one line."""


class DaemonFeed:
    """A running `mglrud run`: its latest /snapshot.json on each poll."""

    mode = "attached"

    def __init__(self, url: str, target: str | None = None, pid: int | None = None):
        self.url, self.target, self.pid = url, target, pid
        self.describe = f"attached to daemon {url}"

    def poll(self) -> SnapshotDoc:
        # only what the heatmap shows: the daemon's whole document is MBs at 65k cells
        # found=1: the heatmap reads a region's newest find only (render/heatmap.py, without passes)
        return client.fetch_snapshot(self.url, timeout=5.0, target=self.target, pid=self.pid, found=1)

    def aging(self, snap: SnapshotDoc | None) -> str:
        spans = sorted({p.interval_seconds for p in (read(snap).processes() if snap else ())
                        if p.interval_seconds is not None})
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

    def poll(self) -> SnapshotDoc:
        from mglrud import snapshot_json

        with self.lock:
            # Like the daemon: the first cycle only reads, later ones age what is due.
            snap = self.engine.cycle(age=not self.first)
            self.first = False
        return snapshot_json.from_dict(snapshot_json.to_dict(snap))  # what a daemon would serve

    def aging(self, snap: SnapshotDoc | None) -> str:
        return f"{self.interval:g}s"

    def set_aging(self, seconds: float) -> str:
        """A new aging interval for every target of the session, due at most `seconds` from now."""
        with self.lock:
            targets = tuple(dataclasses.replace(t, interval=seconds) for t in self.cfg.targets)
            self.cfg = dataclasses.replace(self.cfg, targets=targets,
                                           aging=dataclasses.replace(self.cfg.aging, interval=seconds))
            self.engine.configure(self.cfg)
            # configure() keeps the schedule; a shorter interval should not wait out the old one.
            self.engine.reschedule(seconds)
        return f"aging interval now {seconds:g}s"

    def close(self) -> None:
        self.engine.close()


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
        url = client.default_url(args.url)
        feed = DaemonFeed(url, args.target, args.pid)
        try:
            first = feed.poll()
        except client.FetchError:
            why = f"no daemon at {url}"
        else:
            check_daemon_has(first, args.target, args.pid)
            return feed, first
    return OwnSession(own_config(args, args.aging), why), None


def check_daemon_has(snap: SnapshotDoc | dict, target: str | None, pid: int | None) -> None:
    snap = read(snap)
    if snap.redacted:
        raise HeatmapError(f"{client.REDACTED_NOTE}; or run the heatmap with --own")
    names = snap.target_names()
    known = ", ".join(sorted(names)) or "none"
    if target is not None and target not in names:
        raise HeatmapError(f"the daemon has no target {target!r}; its targets: {known}")
    if pid is not None:
        pids = {p.pid for p in snap.processes()}
        pids |= {g for t in (snap.hotness.targets if snap.hotness else ()) for g in t.tgids}
        if pid not in pids:
            raise HeatmapError(f"the daemon has no data for pid {pid} (not a process of its targets: {known}); "
                               f"add it to its config, or run this with --own")


class History:
    """The snapshots seen, each reduced once to its cells; mapping names of BPF regions from /proc/PID/maps."""

    def __init__(self, target: str | None, pid: int | None):
        self.target, self.pid = target, pid
        # (time, cells) by time: one per snapshot, and one per aging pass where the snapshots list
        # them (render/heatmap.py columns()); a pass lies before the snapshot that first listed it
        self.columns: list = []
        self.passes: set = set()  # (memcg id, seq) of the passes already in columns
        self.maps: dict[int, list[tuple[int, int, str]]] = {}
        self.maps_at = -MAPS_REFRESH
        self.regions: set = set()  # (tgid, start) of the BPF regions seen: a new one re-reads the maps
        self.latest: SnapshotDoc | None = None

    def add(self, snap: SnapshotDoc | dict) -> bool:
        snap = read(snap)
        t = snap.taken_at
        if self.latest is not None and self.latest.taken_at >= t:
            return False  # the daemon has not published a new one since
        if snap.hotness:
            # a region not seen before may lie in a mapping made since the maps were read (memcached's
            # new slab pages): read them now, not up to MAPS_REFRESH later, so its row is named at once
            regions = snap.regions(self.target, self.pid).keys()
            if not regions <= self.regions or time.monotonic() - self.maps_at >= MAPS_REFRESH:
                self.maps = client.hotness_maps(snap, self.target, self.pid)
                self.maps_at = time.monotonic()
                self.regions |= regions
        for col in HM.columns(snap, self.target, self.pid, self.maps, self.passes):
            bisect.insort(self.columns, col, key=lambda c: c[0])
        if len(self.columns) > HISTORY:
            del self.columns[:len(self.columns) - HISTORY]
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
