"""Collectors: client_python custom collectors that render the latest Snapshot on each collect().

They never touch the kernel: aging changes kernel state, so it runs only in
the daemon's loop, and a scrape only renders what the loop last published.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client.core import CollectorRegistry

from mglrud.collectors.bpf import BpfCollector
from mglrud.collectors.memcg import MemcgCollector
from mglrud.collectors.procfs import ProcfsCollector
from mglrud.collectors.selfmetrics import SelfCollector
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


def build_registry(published: Published, wall: Callable[[], float] = time.time) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SelfCollector(published, wall))
    registry.register(MemcgCollector(published))
    registry.register(ProcfsCollector(published))
    registry.register(BpfCollector(published))
    return registry
