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


def families(snap: Snapshot | None, now: float):
    """Every metric family of one Snapshot, in /metrics order."""
    yield from selfmetrics.families(snap, now)
    if snap is None:
        return
    for module in (memcg, workload, procfs, bpf):
        yield from module.families(snap)


class SnapshotCollector:
    def __init__(self, published: Published, wall: Callable[[], float]):
        self.published, self.wall = published, wall

    def collect(self):
        yield from families(self.published.current, self.wall())  # one read: one snapshot per scrape


def build_registry(published: Published, wall: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(published, wall))
    return registry
