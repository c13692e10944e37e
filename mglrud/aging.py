"""The aging schedule: which memcg is due when, the aging writes, and their counters.

Aging is a write to /sys/kernel/debug/lru_gen (sources/lru_gen.py `age()`):
the kernel walks the memcg's page tables and creates a new generation. Many
memcgs are spread over the aging interval rather than aged together: each memcg
gets a fixed phase inside its interval from a hash of its path, so the
page-table walks (the cost of aging) are spread evenly and stay in the same
place from cycle to cycle.

The counters only grow (they back mglrud_aging_* counters) and end up, frozen,
in each Snapshot as AgingStats.
"""

from __future__ import annotations

import logging
import zlib
from bisect import bisect_left
from itertools import accumulate
from collections import Counter
from typing import Callable

from mglrud.config import Target
from mglrud.fs import Writer
from mglrud.model import AgingStats
from mglrud.model.lru_gen import GenHistogram
from mglrud.sources import lru_gen
from mglrud.targets import Resolution, memcg_index

log = logging.getLogger(__name__)

# Aging a memcg costs one page-table walk over its processes: milliseconds to seconds.
DURATION_EDGES = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Memcgs due within this many seconds are aged in the same wake-up.
SLACK = 0.25
# Wake-ups to age are at least spacing() apart: a fraction of the shortest interval, at most
# one snapshot interval. Every wake-up reads (and after aging re-reads) lru_gen, which with
# thousands of memcgs costs more than the writes, so 3,000 phases spread over a minute must
# not mean hundreds of wake-ups a minute. A memcg is then aged up to that much after its phase,
# never before it; its next aging stays on its phase (due + interval), so lateness does not
# add up, and walks are still spread, over about WAKEUPS groups an interval.
WAKEUPS = 6


def spacing(intervals, snapshot_interval: float) -> float:
    """The least time between two wake-ups to age (see WAKEUPS)."""
    shortest = min(intervals, default=0.0)
    return max(SLACK, min(snapshot_interval, shortest / WAKEUPS))


def phase(path: str, interval: float) -> float:
    return zlib.crc32(path.encode()) / 2**32 * interval


class Aging:
    def __init__(self, clock: Callable[[], float], wall: Callable[[], float]):
        self.clock, self.wall = clock, wall
        self.runs = 0
        self.errors: Counter[str] = Counter({r: 0 for r in lru_gen.REASONS})
        self._per_bucket = [0] * (len(DURATION_EDGES) + 1)  # per bucket (le edge, then +Inf); stats() adds up
        self.duration_sum = 0.0
        self.last_success: dict[str, float] = {}  # target name -> wall time
        self.next_due: dict[str, float] = {}  # memcg path -> monotonic time
        self.spacing = SLACK  # see spacing(); the Engine sets it from the config
        self.last_aged = float("-inf")  # monotonic time of the latest wake-up that aged

    # ------------------------------------------------------------ the schedule

    def schedule(self, owner: dict[str, Target]) -> None:
        """Keep the schedule to the memcgs the targets own now; a new one starts at its phase."""
        now = self.clock()
        for path in list(self.next_due):
            if path not in owner:
                del self.next_due[path]
        for path, t in owner.items():
            if path not in self.next_due:
                self.next_due[path] = now + phase(path, t.interval)

    def due_in(self) -> float:
        """Seconds until the next wake-up to age: the earliest due memcg, spaced (spacing())."""
        return max(min(self.next_due.values(), default=float("inf")),
                   self.last_aged + self.spacing) - self.clock()

    def due(self, owner: dict[str, Target], age_all: bool) -> list[str]:
        now = self.clock()
        return [p for p in owner if age_all or self.next_due[p] <= now + SLACK]

    def reschedule(self, within: float) -> None:
        latest = self.clock() + within
        self.last_aged = float("-inf")  # not held back by the spacing either
        for path, due in self.next_due.items():
            self.next_due[path] = min(due, latest)

    # ------------------------------------------------------------ aging

    def age(self, due: list[str], lruvecs: tuple[GenHistogram, ...], owner: dict[str, Target],
            resolutions: tuple[Resolution, ...], writer: Writer,
            reread: Callable[[], tuple[GenHistogram, ...]], index: dict[str, int] | None = None) -> None:
        """Age every node of each due memcg, then schedule its next aging one interval on.
        `index`: memcg_index(lruvecs), when the caller has it already.

        Linear in lruvecs + due memcgs: the due memcgs' lruvecs are grouped by path and the
        targets by memcg once, not scanned again for every due memcg."""
        self.last_aged = self.clock()
        if index is None:
            index = memcg_index(lruvecs)
        due_set = set(due)
        nodes: dict[str, list[GenHistogram]] = {}
        for h in lruvecs:
            if h.memcg_path in due_set and index.get(h.memcg_path) == h.memcg_id:
                nodes.setdefault(h.memcg_path, []).append(h)
        names: dict[str, list[str]] = {}  # memcg path -> the targets that own or share it
        for r in resolutions:
            for path in r.memcgs:
                if path in due_set:
                    names.setdefault(path, []).append(r.target.name)
        for path in due:
            t = owner[path]
            ok = False
            for h in nodes.get(path, ()):
                res = lru_gen.age(h, writer, reread, t.can_swap, t.force_scan, self.clock)
                self._observe(res)
                ok = ok or res.ok
            if ok:
                stamp = self.wall()
                for name in names.get(path, ()):
                    self.last_success[name] = stamp
            now = self.clock()
            nxt = self.next_due[path] + t.interval
            self.next_due[path] = nxt if nxt > now else now + t.interval

    def count_error(self, reason: str) -> None:
        self.errors[reason] += 1

    def _observe(self, res: lru_gen.AgingResult) -> None:
        self.runs += 1
        if not res.ok:
            self.errors[res.reason] += 1
            log.warning("aging %s node %d failed: %s (%s)", res.memcg_path, res.node, res.reason,
                        "; ".join(res.commands))
        else:
            log.debug("aged %s node %d in %.3fs: %s", res.memcg_path, res.node, res.duration, res.commands[-1])
        self.duration_sum += res.duration
        # the first edge >= duration (le); past the last: +Inf only
        self._per_bucket[bisect_left(DURATION_EDGES, res.duration)] += 1

    @property
    def duration_counts(self) -> list[int]:
        """Cumulative per edge (le), then +Inf: what the histogram exports."""
        return list(accumulate(self._per_bucket))

    def stats(self) -> AgingStats:
        return AgingStats(
            runs=self.runs,
            errors=tuple(sorted(self.errors.items())),
            duration_edges=DURATION_EDGES,
            duration_counts=tuple(self.duration_counts),
            duration_sum=self.duration_sum,
        )
