"""mglrud's own health: build, aging runs and errors, sources, targets, snapshot age."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud import __version__

DROP_REASONS = ("empty", "max_memcgs")  # mglrud_target_memcgs_dropped{reason}: sources/lru_gen.py select()


def families(snap, now: float):
    """Build info always; the rest from `snap` when there is one (`now`: wall time of the scrape)."""
    info = GaugeMetricFamily("mglrud_build_info", "Always 1; the label says which mglrud runs.",
                             labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    if snap is None:
        return

    age = GaugeMetricFamily("mglrud_snapshot_age_seconds",
                            "Seconds since the snapshot these metrics render was taken; "
                            "it grows if the aging loop stalls.", value=max(0.0, now - snap.taken_at))
    yield age

    up = GaugeMetricFamily("mglrud_source_up", "1 if the source was read in the latest cycle, else 0 "
                                               "(`mglrud check` and the log say why).", labels=["source"])
    chosen = GaugeMetricFamily("mglrud_source_chosen", "1 for each source mglrud runs (`sources:` in the "
                               "config, `auto` by default); a source with 0 is reported but not used.",
                               labels=["source"])
    for s in snap.sources:
        up.add_metric([s.name], 1 if s.up else 0)
        chosen.add_metric([s.name], 1 if s.chosen else 0)
    yield up
    yield chosen

    a = snap.aging
    runs = CounterMetricFamily("mglrud_aging_runs", "Aging commands run, one per memcg and node "
                                                    "(retries after a stale max_seq not counted).", value=a.runs)
    yield runs
    errors = CounterMetricFamily("mglrud_aging_errors", "Aging runs that failed, by reason: einval (still "
                                 "stale after one retry), erange (too many generations and force_scan off), "
                                 "enoent, eperm, memcg_gone, no_debugfs, other.", labels=["reason"])
    for reason, n in a.errors:
        errors.add_metric([reason], n)
    yield errors
    dur = HistogramMetricFamily("mglrud_aging_duration_seconds",
                                "Time one aging write took: the kernel's page-table walk of the memcg "
                                "on one node.", labels=[])
    buckets = [(floatToGoString(e), n) for e, n in zip(a.duration_edges, a.duration_counts)]
    buckets.append(("+Inf", a.duration_counts[-1] if a.duration_counts else 0))
    dur.add_metric([], buckets, a.duration_sum)
    yield dur

    last = GaugeMetricFamily("mglrud_last_successful_aging_timestamp_seconds",
                             "Unix time of the latest successful aging of any memcg of this target; "
                             "absent until the first one.", labels=["target"])
    memcgs = GaugeMetricFamily("mglrud_target_memcgs", "Memcgs this target resolved to in the latest "
                               "cycle (0: see the log or /snapshot.json for why).", labels=["target"])
    dropped = GaugeMetricFamily("mglrud_target_memcgs_dropped", "Memcgs of this target left out of the "
                                "mglrud_memcg_* families in the latest cycle (still aged), by reason: "
                                "empty (no resident pages; metrics.keep_empty_memcgs keeps them), max_memcgs "
                                "(beyond metrics.max_memcgs_per_target, the smallest by resident bytes).",
                                labels=["target", "reason"])
    left_out = {(t, r): n for t, r, n in getattr(snap, "memcgs_dropped", ())}
    for t in snap.targets:
        if t.last_success is not None:
            last.add_metric([t.name], t.last_success)
        memcgs.add_metric([t.name], len(t.memcgs))
        for reason in DROP_REASONS:
            dropped.add_metric([t.name, reason], left_out.get((t.name, reason), 0))
    yield last
    yield memcgs
    yield dropped
