"""The Snapshot: everything one cycle of the daemon found, immutable.

A Snapshot is built by the Engine (mglrud/cycle.py) from the parts its sources
return, and published by swapping one reference; collectors, /snapshot.json
and the CLI only read it. Each source's own data lives in its model module
(lru_gen.py, procfs.py, hotness.py beside this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mglrud.model.hotness import HotnessData
from mglrud.model.lru_gen import GenHistogram
from mglrud.model.procfs import ProcfsData


@dataclass(frozen=True)
class SourceStatus:
    name: str
    up: bool
    reason: str = ""  # why it is down, as a sentence
    chosen: bool = True  # run because of `sources:` (lru_gen is reported even when not chosen)


@dataclass(frozen=True)
class TargetState:
    name: str
    kind: str
    selector: str
    memcgs: tuple[str, ...]  # cgroup paths this target resolved to in the latest cycle
    problem: str = ""  # why it resolved to nothing, when it did
    last_success: float | None = None  # wall-clock time of its latest successful aging


@dataclass(frozen=True)
class AgingStats:
    """Cumulative since start; these back counters, so they never go down."""

    runs: int = 0
    errors: tuple[tuple[str, int], ...] = ()  # (reason, count), every known reason listed
    duration_edges: tuple[float, ...] = ()
    duration_counts: tuple[int, ...] = ()  # cumulative per edge, then +Inf
    duration_sum: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # wall-clock seconds
    page_size: int
    cold_thresholds: tuple[float, ...]
    idle_age_buckets: tuple[float, ...]
    lruvecs: tuple[GenHistogram, ...] = ()  # the target memcgs only
    targets: tuple[TargetState, ...] = ()
    sources: tuple[SourceStatus, ...] = ()
    aging: AgingStats = field(default_factory=AgingStats)
    procfs: ProcfsData | None = None  # the /proc source's mappings, when that source runs
    hotness: HotnessData | None = None  # the BPF source's per-region heat, when it runs
    disabled_families: frozenset[str] = frozenset()  # metrics.disable: families /metrics leaves out
    # (target, reason, memcgs) the lru_gen source left out of `lruvecs`: reason "empty" (no
    # resident pages, metrics.keep_empty_memcgs off) or "max_memcgs" (metrics.max_memcgs_per_target)
    memcgs_dropped: tuple[tuple[str, str, int], ...] = ()
    # mglrud/redact.py made this for a client who may not see addresses or file names: mapping
    # names are classes, and /snapshot.json leaves out addresses and per-region cells
    redacted: bool = False
