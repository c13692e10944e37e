"""Per-memcg metrics from lru_gen generation histograms (mglrud/sources/lru_gen.py).

Labels: memcg = cgroup v2 path (ids are reused by the kernel, paths are what
people know), numa_node = NUMA node, lru = anon|file, gen = generation relative to
the youngest (0) because the kernel's sequence numbers grow without bound.
"""

from __future__ import annotations

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud.model.lru_gen import LRUS, cold_pages, idle_histogram

# metrics.disable keys -> the families they switch off (collectors/__init__.py gathers them).
FAMILIES = {
    "resident": "mglrud_memcg_resident_bytes",
    "generation": "mglrud_memcg_generation_bytes",
    "generation_age": "mglrud_memcg_generation_age_seconds",
    "cold": "mglrud_memcg_cold_bytes",
    "idle_age": "mglrud_memcg_idle_age_seconds",
}

HELP = {
    "resident": "Bytes on the multi-gen LRU of this memcg and node: the sum over its generations.",
    "generation": "Bytes in each generation; gen=\"0\" is the youngest (most recently accessed), "
                  "higher is older. The kernel keeps at most 4 generations per memcg and node.",
    "age": "Seconds since each generation was created (gen=\"0\" is the youngest), as of the snapshot. "
           "Ages do not add up: sum() over any label is meaningless.",
    "cold": "Bytes in generations whose pages have not been accessed for at least `threshold` seconds: "
            "every generation older than one created at least `threshold` ago. An approximation: "
            "accesses after the latest aging are not yet seen, so it can be wrong by up to one aging "
            "interval, and thresholds beyond 3 aging intervals read 0. Each threshold counts "
            "the bytes of all larger ones too, so sum() over threshold is meaningless.",
    "idle": "Idle age of resident pages, as a gauge histogram whose bucket values are BYTES: bytes whose "
            "lower-bound idle age (the age of the next younger generation; 0 for the youngest) is at most "
            "`le` seconds. Bucket edges come from metrics.idle_age_buckets (default: the cold thresholds). "
            "For Grafana's heatmap panel.",
}


def families(snap):
    """The metric families of one Snapshot (nothing before the source has data)."""
    if snap is None:
        return
    page = snap.page_size
    labels = ["memcg", "numa_node", "lru"]
    # Literal names, as in every collector (tests/unit/test_grafana_dashboards.py reads them from
    # the source); FAMILIES must name the same ones (tests/unit/test_cardinality.py).
    resident = GaugeMetricFamily("mglrud_memcg_resident_bytes", HELP["resident"], labels=labels)
    gen_bytes = GaugeMetricFamily("mglrud_memcg_generation_bytes", HELP["generation"], labels=labels + ["gen"])
    gen_age = GaugeMetricFamily("mglrud_memcg_generation_age_seconds", HELP["age"],
                                labels=["memcg", "numa_node", "gen"])
    cold = GaugeMetricFamily("mglrud_memcg_cold_bytes", HELP["cold"], labels=labels + ["threshold"])
    idle = GaugeHistogramMetricFamily("mglrud_memcg_idle_age_seconds", HELP["idle"], labels=labels)
    F = FAMILIES
    # metrics.disable: skip the work too, not only the output (10k memcgs x nodes x lrus).
    off = getattr(snap, "disabled_families", frozenset())
    want = {k: F[k] not in off for k in F}
    for h in snap.lruvecs:
        node = str(h.node)
        youngest = len(h.generations) - 1
        if want["generation_age"]:
            for i, g in enumerate(h.generations):
                gen_age.add_metric([h.memcg_path, node, str(youngest - i)], g.age_seconds)
        for lru in LRUS:
            key = [h.memcg_path, node, lru]
            if want["resident"]:
                resident.add_metric(key, h.pages(lru) * page)
            if want["generation"]:
                for i, g in enumerate(h.generations):
                    gen_bytes.add_metric(key + [str(youngest - i)], g.pages(lru) * page)
            if want["cold"]:
                for t in snap.cold_thresholds:
                    cold.add_metric(key + [floatToGoString(t)], cold_pages(h, lru, t) * page)
            if want["idle_age"]:
                buckets, page_seconds = idle_histogram(h, lru, snap.idle_age_buckets)
                idle.add_metric(key, [(floatToGoString(le), n * page) for le, n in buckets], page_seconds * page)
    yield from (f for f in (resident, gen_bytes, gen_age, cold, idle) if f.name not in off)
