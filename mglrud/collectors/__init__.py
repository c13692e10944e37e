"""Collectors: render the latest Snapshot as metric families, once per scrape.

They never touch the kernel: aging changes kernel state, so it runs only in
the daemon's loop, and a scrape only renders what the loop last published.
One collector reads the published Snapshot once per scrape and hands that one
object to every family module (memcg.py, procfs.py, bpf.py, selfmetrics.py), so
a scrape never mixes two snapshots.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client.core import CollectorRegistry

from mglrud.collectors import bpf, memcg, procfs, selfmetrics, workload
from mglrud.model import Snapshot

# `metrics.disable` keys -> family names: the per-memcg, per-mapping and per-target data
# families. mglrud's own families (selfmetrics.py, the sources' counters) cannot be
# switched off: the alert rules and `up`-style checks stand on them.
FAMILIES: dict[str, str] = {**memcg.FAMILIES, **workload.FAMILIES, **procfs.FAMILIES, **bpf.FAMILIES}


class Published:
    """The latest Snapshot. Publishing is one reference assignment, atomic in CPython,
    so readers see either the old snapshot or the new one, never a mix."""

    def __init__(self, snapshot: Snapshot | None = None):
        self._snapshot = snapshot

    @property
    def current(self) -> Snapshot | None:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot


class Text:
    """In place of a module's families (families(direct=True)): their text, written by the
    module itself (memcg.chunks()) -- the same bytes client_python's encoders would write."""

    def __init__(self, render: Callable[[bool], list[bytes]], sections: Callable | None = None):
        self.render = render  # openmetrics -> the text in chunks, to be joined
        # openmetrics -> (heads, batches), the same text a batch of lines at a time, family
        # after family (memcg.sections()); None: take render()'s
        self.sections = sections


def families(snap: Snapshot | None, now: float, direct: bool = False):
    """Every metric family of one Snapshot, in /metrics order. direct: memcg's families
    (nearly all the series on a host with many memcgs) and workload's info family (one
    series per memcg) come as a Text each instead."""
    yield from selfmetrics.families(snap, now)
    if snap is None:
        return
    # metrics.disable is a rendering switch: the Snapshot (and /snapshot.json, the TUI, the
    # report) keeps the data, only these families are left out of /metrics. It travels in
    # the Snapshot, so the rendered text stays a function of the snapshot alone (the
    # render-once cache in exposition.py relies on that) and a reload applies it from the
    # next snapshot on, like cold_thresholds.
    off = getattr(snap, "disabled_families", frozenset())
    for module in (memcg, workload, procfs, bpf):
        if direct and module is memcg:
            yield Text(lambda openmetrics: memcg.chunks(snap, openmetrics),  # applies metrics.disable itself
                       lambda openmetrics: memcg.sections(snap, openmetrics))
            continue
        if direct and module is workload:
            if workload.FAMILIES["memcg_info"] not in off:
                yield Text(lambda openmetrics: workload.chunks(snap, openmetrics))
            continue
        yield from (f for f in module.families(snap) if f.name not in off)


class SnapshotCollector:
    def __init__(self, published: Published, wall: Callable[[], float]):
        self.published, self.wall = published, wall

    def collect(self):
        yield from families(self.published.current, self.wall())  # one read: one snapshot per scrape


def build_registry(published: Published, wall: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(published, wall))
    return registry
