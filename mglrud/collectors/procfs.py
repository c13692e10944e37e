"""Per-mapping metrics from the /proc source (mglrud/sources/procfs.py), for kernels without MGLRU.

The families mirror the lru_gen ones in collectors/memcg.py -- resident bytes,
cold bytes per threshold, an idle-age gauge histogram in bytes -- under
`mglrud_mapping_*` instead of `mglrud_memcg_*`: the name says which source
produced them, because the label sets differ (a target's mappings, not a
memcg). A dashboard panel can show either by its metric name.

Labels: target = the configured target's name (never a pid: pids are
unbounded); comm = the process name; mapping = a stable mapping name (a file
path without " (deleted)", [heap], [stack], [anon], ...); numa_node = NUMA node;
lru = anon|file. Cardinality is bounded per target: the top `procfs.top_mappings`
(comm, mapping) pairs by resident bytes get their own series, the rest are
summed under comm="", mapping="other". With K top mappings, N nodes and T cold
thresholds that is at most (K+1) * (2N + 2 + 2T) + 2 * (B + 3) + 2 series per target
(B = idle-age bucket edges): 124 with the defaults on one node.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud.model.procfs import cold_bytes, group_mappings, idle_histogram, lru_share
from mglrud.model.lru_gen import LRUS

# metrics.disable keys -> the families they switch off (collectors/__init__.py gathers them).
FAMILIES = {
    "mapping_resident": "mglrud_mapping_resident_bytes",
    "mapping_accessed": "mglrud_mapping_accessed_bytes",
    "mapping_idle": "mglrud_mapping_idle_seconds",
    "mapping_cold": "mglrud_mapping_cold_bytes",
    "mapping_idle_age": "mglrud_mapping_idle_age_seconds",
}

HELP = {
    "resident": "Resident bytes of the target's mappings (smaps Rss), by NUMA node (numa_maps) and LRU. "
                "lru=\"anon\" is anonymous memory and shmem/memfd/SysV shared memory (swap-backed); "
                "lru=\"file\" is the page cache. mapping=\"other\" sums the mappings outside the top K.",
    "accessed": "Bytes of the mapping referenced during the latest interval: smaps Referenced one interval "
                "after writing 1 to clear_refs. Can undercount very hot working sets smaller than the TLB "
                "(the kernel clears accessed bits without flushing it). Absent before the first full interval.",
    "idle": "Seconds since any byte of the mapping was last seen referenced, a lower bound good to one "
            "interval; 0 if accessed in the latest interval. For mapping=\"other\", the least of its mappings.",
    "cold": "Resident bytes not referenced for at least `threshold` seconds, a lower bound: a whole mapping once "
            "it has been idle that long, or its unreferenced bytes when the latest interval alone is that long. "
            "Each threshold counts the bytes of all larger ones too, so sum() over threshold is meaningless.",
    "idle_age": "Idle age of the target's resident bytes, as a gauge histogram whose bucket values are BYTES: "
                "bytes whose lower-bound idle age is at most `le` seconds (referenced bytes: 0; unreferenced "
                "bytes of a mapping accessed in the latest interval: the interval; the rest: the mapping's "
                "idle time). Bytes of processes without a full interval yet are left out. For Grafana's heatmap.",
    "interval": "Length of the latest interval over which accessed bytes were measured, the longest among "
                "the target's processes.",
    "processes": "Processes of this target whose /proc files were read in its latest read (the largest by RSS, "
                 "at most procfs.max_processes; 0: see /snapshot.json or the log for why).",
}


def families(snap):
    """The metric families of one Snapshot (nothing before the source has data)."""
    data = getattr(snap, "procfs", None) if snap is not None else None
    if data is None:
        return
    thresholds = snap.cold_thresholds
    edges = snap.idle_age_buckets
    top = data.top_mappings
    key = ["target", "comm", "mapping"]
    resident = GaugeMetricFamily("mglrud_mapping_resident_bytes", HELP["resident"], labels=key + ["numa_node", "lru"])
    accessed = GaugeMetricFamily("mglrud_mapping_accessed_bytes", HELP["accessed"], labels=key)
    idle = GaugeMetricFamily("mglrud_mapping_idle_seconds", HELP["idle"], labels=key)
    cold = GaugeMetricFamily("mglrud_mapping_cold_bytes", HELP["cold"], labels=key + ["lru", "threshold"])
    idle_age = GaugeHistogramMetricFamily("mglrud_mapping_idle_age_seconds", HELP["idle_age"],
                                          labels=["target", "lru"])
    interval = GaugeMetricFamily("mglrud_procfs_interval_seconds", HELP["interval"], labels=["target"])
    processes = GaugeMetricFamily("mglrud_target_processes", HELP["processes"], labels=["target"])

    for t in data.targets:
        processes.add_metric([t.name], len(t.pids))
        procs = tuple(p for p in data.processes if p.target == t.name)
        spans = [p.interval_seconds for p in procs if p.interval_seconds is not None]
        if spans:
            interval.add_metric([t.name], max(spans))
        pairs = []
        for g in group_mappings(procs, t.name, top):
            labels = [t.name, g.comm, g.name]
            pairs.extend(g.mappings)
            for (node, lru), b in sorted(g.node_bytes.items()):
                resident.add_metric(labels + [str(node), lru], b)
            if g.accessed is not None:
                accessed.add_metric(labels, g.accessed)
            idles = [m.idle_seconds for m, span in g.mappings if m.idle_seconds is not None and span is not None]
            if idles:
                idle.add_metric(labels, min(idles))
            # Without clear_refs nothing is measured idle, ever: no cold series rather than
            # a 0 that reads as "nothing is cold".
            for th in thresholds if data.clear_refs else ():
                per_lru = dict.fromkeys(LRUS, 0)
                for m, span in g.mappings:
                    for lru, b in lru_share(m, cold_bytes(m, th, span)).items():
                        per_lru[lru] += b
                for lru in LRUS:
                    cold.add_metric(labels + [lru, floatToGoString(th)], per_lru[lru])
        for lru in LRUS:
            buckets, byte_seconds = idle_histogram(tuple(pairs), edges, lru)
            idle_age.add_metric([t.name, lru], [(floatToGoString(le), b) for le, b in buckets], byte_seconds)
    yield from (resident, accessed, idle, cold, idle_age, interval, processes)

    s = data.stats
    reads = CounterMetricFamily("mglrud_procfs_reads", "Processes whose smaps was read (and clear_refs "
                                "written) by the /proc source.", value=s.reads)
    errors = CounterMetricFamily("mglrud_procfs_errors", "Processes the /proc source could not read, by "
                                 "reason: exited (went away while being read; normal), eperm (no ptrace "
                                 "access or clear_refs not writable: run as root), parse, other.",
                                 labels=["reason"])
    for reason, n in s.errors:
        errors.add_metric([reason], n)
    read_s = CounterMetricFamily("mglrud_procfs_read_seconds", "Time spent reading smaps (and numa_maps): "
                                 "page-table walks under the target's mmap read lock.", value=s.read_seconds)
    clear_s = CounterMetricFamily("mglrud_procfs_clear_refs_seconds", "Time spent writing clear_refs: "
                                  "page-table walks holding the target's mmap lock for writing.",
                                  value=s.clear_seconds)
    scanned = CounterMetricFamily("mglrud_procfs_scanned_bytes", "Resident bytes of the processes read: "
                                  "what the read and clear_refs costs scale with.", value=s.bytes_scanned)
    yield from (reads, errors, read_s, clear_s, scanned)
