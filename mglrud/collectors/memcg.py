"""Per-memcg metrics from lru_gen generation histograms (mglrud/sources/lru_gen.py).

Labels: memcg = cgroup v2 path (ids are reused by the kernel, paths are what
people know), numa_node = NUMA node, lru = anon|file, gen = generation relative to
the youngest (0) because the kernel's sequence numbers grow without bound.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud.memory import gc_paused
from mglrud.model.lru_gen import LRUS, cold_pages, idle_histogram, idle_lower_bounds

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


# ---------------------------------------------------------------- the text, written directly

def _escape(value: str) -> str:
    """A label value as both of client_python's encoders escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _head(name: str, doc: str, kind: str, openmetrics: bool) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        doc = doc.replace('"', r"\"")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


_EXACT = 2 ** 53  # integers up to here are exact as floats (repr(float(n)) == f"{n}.0" below 1e16)


class _Spelled(dict):
    """value -> floatToGoString(value), computed once per distinct value (a C-level lookup after)."""

    def __missing__(self, value) -> str:
        if type(value) is int and -_EXACT < value < _EXACT:
            # floatToGoString's steps for an integral float: repr() is the digits and ".0";
            # from 7 digits on, Go's exponent form
            s = str(value)
            if value > 0 and len(s) > 6:
                s = f"{s[0]}.{s[1:]}0".rstrip("0.") + f"e+0{len(s) - 1}"
            else:
                s += ".0"
        elif type(value) is float and -math.inf < value < 1e6:
            s = repr(value)  # floatToGoString: Go's exponent form only from 1e6 on
        else:
            s = floatToGoString(value)
        if value:  # 0 == -0.0 == 0 as keys, but floatToGoString spells -0.0 "-0.0"
            self[value] = s
        return s


def render(snap, openmetrics: bool = False) -> bytes:
    """The families' text (chunks(), joined)."""
    return b"".join(chunks(snap, openmetrics))


def chunks(snap, openmetrics: bool = False) -> list[bytes]:
    """render()'s text in pieces, made with the cyclic collector paused (memory.gc_paused():
    the lists of lines make no cycles)."""
    with gc_paused():
        return _chunks(snap, openmetrics)


def _chunks(snap, openmetrics: bool) -> list[bytes]:
    """families(snap) as client_python's encoder writes them (text 0.0.4, or OpenMetrics without
    its `# EOF`), byte for byte (tests/unit/test_exposition.py compares the two on every fixture).

    Why: these families are nearly all of /metrics on a host with many memcgs (64 series per
    memcg and node with the defaults), and client_python spends ~10 us and a labels dict per
    sample on them: at 3,000 memcgs 1.8 s and most of the daemon's peak memory a render. Here
    each memcg's, node's and lru's label text is built once and every line is one f-string;
    labels are in client_python's order (sorted by name); values are spelled by
    floatToGoString, once per distinct value (byte counts repeat, 0 above all). Lines are
    encoded a batch of memcgs at a time, so the peak is the bytes, not the lines as str objects
    (~150 bytes each over their text), and the caller joins the chunks once, with its own."""
    if snap is None:
        return []
    off = getattr(snap, "disabled_families", frozenset())
    want_res, want_gen, want_age, want_cold, want_idle = (
        FAMILIES[k] not in off for k in ("resident", "generation", "generation_age", "cold", "idle_age"))
    n_res, n_gen, n_age, n_cold, n_idle = (
        FAMILIES[k] for k in ("resident", "generation", "generation_age", "cold", "idle_age"))
    page = snap.page_size
    spell = _Spelled()
    thresholds = [(t, floatToGoString(t)) for t in snap.cold_thresholds]
    edges = tuple(snap.idle_age_buckets) + (math.inf,)
    les = [f'{n_idle}_bucket{{le="{floatToGoString(e)}",' for e in edges]
    # cumulative() sums each bucket on its own; with sorted edges a point's first bucket is a
    # bisect and the rest a running sum (integers: the same totals).
    ascending = list(edges) == sorted(edges)
    gen_labels: dict[int, list[str]] = {}
    resident, gen_bytes, gen_age, cold, idle, gcount, gsum = lists = [], [], [], [], [], [], []
    encoded: list[list[bytes]] = [[] for _ in lists]
    for seen, h in enumerate(snap.lruvecs, 1):
        if seen % _BATCH == 0:
            _encode(lists, encoded)
        mn = f'memcg="{_escape(h.memcg_path)}",numa_node="{h.node}"'
        gens = h.generations
        gl = gen_labels.get(len(gens))
        if gl is None:  # gen="0" is the youngest, the last one
            gl = gen_labels[len(gens)] = [f'gen="{len(gens) - 1 - i}",' for i in range(len(gens))]
        if want_age:
            gen_age += [f"{n_age}{{{g_}{mn}}} {spell[g.age_seconds]}\n" for g_, g in zip(gl, gens)]
        bounds = idle_lower_bounds(h)
        # per threshold the generations idle at least that long: usually the oldest k (bounds do
        # not grow towards the youngest), summed as a slice
        cold_gens = []
        for t, ts in thresholds:
            js = [j for j, b in enumerate(bounds) if b >= t]
            cold_gens.append((ts, len(js) if js[-1:] == [len(js) - 1] or not js else -1, js))
        first = [bisect_left(edges, b) for b in bounds] if ascending else None
        for lru in LRUS:
            counts = [g.anon_pages for g in gens] if lru == "anon" else [g.file_pages for g in gens]
            lm = f'lru="{lru}",{mn}'
            if want_res:
                resident.append(f"{n_res}{{{lm}}} {spell[sum(counts) * page]}\n")
            if want_gen:
                gen_bytes += [f"{n_gen}{{{g_}{lm}}} {spell[n * page]}\n" for g_, n in zip(gl, counts)]
            if want_cold:
                cold += [f'{n_cold}{{{lm},threshold="{ts}"}} '
                         f'{spell[(sum(counts[:k]) if k >= 0 else sum([counts[j] for j in js])) * page]}\n'
                         for ts, k, js in cold_gens]
            if want_idle:
                if first is not None:
                    per = [0] * len(edges)
                    for k, n in zip(first, counts):
                        if k < len(per):
                            per[k] += n
                    values = [spell[v * page] for v in accumulate(per)]
                else:
                    values = [spell[sum(n for b, n in zip(bounds, counts) if b <= e) * page] for e in edges]
                idle += [f"{le}{lm}}} {v}\n" for le, v in zip(les, values)]
                # the sum in cumulative()'s order: a float sum's last bits depend on it
                seconds = spell[sum([b * n for b, n in zip(bounds, counts) if b != math.inf]) * page]
                if openmetrics:
                    idle.append(f"{n_idle}_gcount{{{lm}}} {values[-1]}\n{n_idle}_gsum{{{lm}}} {seconds}\n")
                else:
                    gcount.append(f"{n_idle}_gcount{{{lm}}} {values[-1]}\n")
                    gsum.append(f"{n_idle}_gsum{{{lm}}} {seconds}\n")
    _encode(lists, encoded)
    res_b, gen_b, age_b, cold_b, idle_b, gcount_b, gsum_b = encoded
    out: list[bytes] = []
    for want, key, chunks in ((want_res, "resident", res_b), (want_gen, "generation", gen_b),
                              (want_age, "generation_age", age_b), (want_cold, "cold", cold_b)):
        if want:
            out.append(_head(FAMILIES[key], HELP[_HELP_KEY[key]], "gauge", openmetrics).encode())
            out += chunks
    if want_idle:
        doc = HELP["idle"]
        out.append(_head(n_idle, doc, "gaugehistogram" if openmetrics else "histogram", openmetrics).encode())
        out += idle_b
        if gcount_b:  # text 0.0.4: client_python moves _gcount and _gsum to gauges after the family
            out += [_head(n_idle + "_gcount", doc, "gauge", False).encode()] + gcount_b
            out += [_head(n_idle + "_gsum", doc, "gauge", False).encode()] + gsum_b
    return out


_BATCH = 256  # lruvecs whose lines are encoded together


def _encode(lists: list[list[str]], encoded: list[list[bytes]]) -> None:
    for lines, chunks in zip(lists, encoded):
        if lines:
            chunks.append("".join(lines).encode())
            lines.clear()


_HELP_KEY = {"resident": "resident", "generation": "generation", "generation_age": "age", "cold": "cold",
             "idle_age": "idle"}
