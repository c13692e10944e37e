"""Per-target access heat from the BPF source (mglrud/sources/bpf_hotness.py, mglrud/model/hotness.py).

Cardinality is bounded by the config, never by the workload: per process
target one histogram of heat over address offset (bpf.heat_buckets buckets,
`le` a fraction of the target's collapsed address space); per target, numa_node and
lru an idle-age histogram (metrics.idle_age_buckets), cold bytes per
threshold and an accessed-bytes counter. No pid, address or region label.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud.model import hotness as H

# metrics.disable keys -> the families they switch off (collectors/__init__.py gathers them).
# mglrud_target_accessed_bytes is a counter: its family name has no _total.
FAMILIES = {
    "access_offset": "mglrud_target_access_offset_ratio",
    "region_idle_age": "mglrud_target_region_idle_age_seconds",
    "region_cold": "mglrud_target_region_cold_bytes",
    "target_accessed": "mglrud_target_accessed_bytes",
}

HELP = {
    "offset": "Access heat over the target's address space, as a gauge histogram whose bucket values are "
              "BYTES PER SECOND: the exponentially weighted rate (half-life bpf.half_life) of bytes the MGLRU "
              "aging walk found accessed, at an address offset of at most `le` (a fraction of the target's "
              "mapped address space: its processes' resident mappings one after the other, holes between "
              "them collapsed). bpf.heat_buckets buckets; for Grafana's heatmap panel (address x time). "
              "/snapshot.json says which addresses each bucket covers.",
    "idle": "Idle age of the target's resident memory, counted per (process, region, node, lru) cell of "
            "bpf.region_size, as a gauge histogram whose bucket values are BYTES: per cell, the most pages any one "
            "aging pass within the last `le` seconds found accessed (capped at its resident pages); the rest of "
            "its resident bytes, never found accessed since mglrud started or not within the recent passes kept, "
            "only in +Inf. Resident bytes come from /proc/PID/pagemap for the target's processes "
            "(bpf.max_processes each). A lower bound that errs by up to one aging interval.",
    "cold": "Resident bytes of the target not found accessed by aging for at least `threshold` seconds: per "
            "(process, region, node, lru) cell, its resident pages minus the most pages one aging pass found "
            "accessed within the threshold (never-accessed cells count whole). Each threshold counts the bytes of "
            "all larger ones too, so sum() over threshold is meaningless.",
    "accessed": "Bytes the MGLRU aging walk found accessed (young page-table entries) in the target's "
                "processes or memcgs since mglrud started; each aging that finds a page accessed counts it "
                "once, so rate() is bytes found accessed per second.",
}


def families(snap):
    """The metric families of one Snapshot (nothing before the source has data)."""
    data: H.HotnessData | None = getattr(snap, "hotness", None) if snap is not None else None
    if data is None:
        return
    page = data.page_size
    offset = GaugeHistogramMetricFamily("mglrud_target_access_offset_ratio", HELP["offset"],
                                        labels=["target"])
    key = ["target", "numa_node", "lru"]
    idle = GaugeHistogramMetricFamily("mglrud_target_region_idle_age_seconds", HELP["idle"], labels=key)
    cold = GaugeMetricFamily("mglrud_target_region_cold_bytes", HELP["cold"], labels=key + ["threshold"])
    accessed = CounterMetricFamily("mglrud_target_accessed_bytes", HELP["accessed"], labels=key)
    for t in data.targets:
        if t.buckets:
            n = len(t.buckets)
            le = [floatToGoString(e) for e in H.bucket_edges(n)]
            cum, buckets, gsum = 0.0, [], 0.0
            for i, b in enumerate(t.buckets):
                cum += b.heat
                gsum += b.heat * (i + 0.5) / n
                buckets.append((le[i] if i < n - 1 else "+Inf", cum))
            offset.add_metric([t.name], buckets, gsum)
        totals = {(n, l): b for n, l, b in t.accessed_bytes_total}
        idle_and_cold = getattr(t.regions, "idle_and_cold", None)
        if idle_and_cold is not None:
            # the BPF source's columns (model/heat_columns.py): the same figures, no object per cell
            per_pair = idle_and_cold(snap.idle_age_buckets, snap.cold_thresholds, page)
        else:
            cells: dict[tuple[int, str], list] = {}
            for r in t.regions:
                cells.setdefault((r.node, r.lru), []).append(r)
            per_pair = {pair: H.idle_histogram(rs, snap.idle_age_buckets, page)
                        + ([H.cold_bytes(rs, th, page) for th in snap.cold_thresholds],)
                        for pair, rs in cells.items()}
        for node, lru, b in t.accessed_bytes_total:
            per_pair.setdefault((node, lru), H.idle_histogram([], snap.idle_age_buckets, page)
                                + ([0] * len(snap.cold_thresholds),))
        for (node, lru), (buckets, total, colds) in sorted(per_pair.items()):
            labels = [t.name, str(node), lru]
            idle.add_metric(labels, [(floatToGoString(e), v) for e, v in buckets], total)
            for th, c in zip(snap.cold_thresholds, colds):
                cold.add_metric(labels + [floatToGoString(th)], c)
            accessed.add_metric(labels, totals.get((node, lru), 0))
    yield from (offset, idle, cold, accessed)

    ev = CounterMetricFamily("mglrud_bpf_events", "Events of the tracepoint vmscan:mm_vmscan_lru_gen_young "
                             "the BPF program saw (young page-table entries found by aging, any process).",
                             value=data.events)
    matched = CounterMetricFamily("mglrud_bpf_matched_events", "Events of a target's processes or memcgs, "
                                  "counted in the program's map.", value=data.matched)
    dropped = CounterMetricFamily("mglrud_bpf_dropped_events", "Events of a target the program could not "
                                  "count because its map was full (raise bpf.max_regions or region_size).",
                                  value=data.dropped)
    entries = GaugeMetricFamily("mglrud_bpf_map_entries", "Entries in the program's (tgid, memcg, region, "
                                "node, lru) map after the latest read; it holds at most "
                                "mglrud_bpf_map_capacity.", value=data.map_entries)
    cap = GaugeMetricFamily("mglrud_bpf_map_capacity", "Size of the program's map (bpf.max_regions).",
                            value=data.map_capacity)
    region = GaugeMetricFamily("mglrud_bpf_region_bytes", "Size of the regions heat is counted in "
                               "(bpf.region_size).", value=data.region_size)
    attached = GaugeMetricFamily("mglrud_bpf_program_attached", "1 while bpf/hotness.bpf.c is attached; "
                                 "`event` is the tracepoint (the range event when the kernel has it), or, "
                                 "without mglrud's patch, fexit or kretprobe (the accessed-bit probe).",
                                 labels=["event"])
    attached.add_metric([data.event or "unknown"], 1)
    harvested = CounterMetricFamily("mglrud_bpf_harvested_bytes", "Bytes of targets' pages found accessed, "
                                    "by who cleared the accessed bit: aging (mglrud's lru_gen writes), "
                                    "reclaim (kswapd, direct or memcg reclaim), other (clear_refs, page_idle, "
                                    "DAMON...). Only aging counts in heat on the probe (docs/stock-kernel.md).",
                                    labels=["harvester"])
    for who, pages in data.harvested:
        harvested.add_metric([who], pages * data.page_size)
    yield from (ev, matched, dropped, entries, cap, region, attached, harvested)
