"""Per-memcg metrics from lru_gen generation histograms (mglrud/sources/lru_gen.py).

Labels: memcg = cgroup v2 path (ids are reused by the kernel, paths are what
people know), numa_node = NUMA node, lru = anon|file, gen = generation relative to
the youngest (0) because the kernel's sequence numbers grow without bound.
"""

from __future__ import annotations

import math
from itertools import repeat
from operator import add, itemgetter, mul

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from mglrud.memory import gc_paused
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


def _spell(value) -> str:
    """floatToGoString(value), faster for the values these families have."""
    if type(value) is int and -_EXACT < value < _EXACT:
        # floatToGoString's steps for an integral float: repr() is the digits and ".0";
        # from 7 digits on, Go's exponent form
        s = str(value)
        if value > 0 and len(s) > 6:
            return f"{s[0]}.{s[1:]}0".rstrip("0.") + f"e+0{len(s) - 1}"
        return s + ".0"
    if type(value) is float and -math.inf < value < 1e6:
        return repr(value)  # floatToGoString: Go's exponent form only from 1e6 on
    return floatToGoString(value)


class _Line(dict):
    """value -> floatToGoString(value), once per distinct value in a render: a line's last piece
    but its newline (see _chunks()), for the columns of integers (bytes: they repeat, 0 above
    all); columns of floats go by _floats().

    Zero is kept too, under the key 0 (== 0.0): 0 and 0.0 are spelled "0.0"; -0.0 ("-0.0")
    does not come here: page counts are unsigned, so bytes are non-negative integers."""

    def __missing__(self, value) -> str:
        s = self[value] = _spell(value)
        return s


class _Paged(dict):
    """page count -> the spelling of its bytes (count * page) in `spelled`, a _Line: a column
    of counts is spelled by one map() over this dict's __getitem__, no column of bytes made.
    (It refers to the _Line, never the other way: no reference cycle, both are freed with the
    render, not at the next full collection.)"""

    def __init__(self, page: int, spelled: _Line):
        super().__init__()
        self.page, self.spelled = page, spelled

    def __missing__(self, count) -> str:
        s = self[count] = self.spelled[count * self.page]
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
    sample on them: at 3,000 memcgs 1.8 s and most of the daemon's peak memory a render.

    How: a line is three or four pieces -- the name and the labels before memcg (one string
    per family, lru, gen or edge), the memcg's and node's labels (one string per lruvec), and
    the value with its newline (one string per distinct value, spelled by floatToGoString
    once) -- and a family's lines are one str.join() over a list whose every third item is
    one kind of piece, filled by slice assignment. The values are computed by columns: the
    lruvecs of a run with the same number of generations side by side, one list per
    generation, combined by map() (C loops, no Python step per value). So no f-string and no
    line object per line: the Python work is per lruvec and per column. Labels are in
    client_python's order (sorted by name). Lines are joined and encoded a batch of lruvecs at
    a time, so the peak is the bytes and the lists of references, and the caller joins the
    chunks once, with its own."""
    if snap is None:
        return []
    heads, batches = _sections(snap, openmetrics)
    sections: list[list[bytes]] = [[] for _ in heads]
    for texts in batches:
        for section, text in zip(sections, texts):
            if text is not None:
                section.append(text)
    out: list[bytes] = []
    for head, section in zip(heads, sections):
        if head is not None:
            out.append(head)
            out += section
    return out


def sections(snap, openmetrics: bool = False):
    """chunks()' text as (heads, batches), for a consumer that takes each batch's lines as they
    are written (exposition.render_deflated(): deflated at once, never all held): `heads` the
    HELP and TYPE text of each section (resident, generation, age, cold, idle, and for text
    0.0.4 idle's _gcount and _gsum), None for a section not written; `batches` an iterator of
    one list per batch of lruvecs, the batch's text of each section (None: none). chunks() is
    each head followed by its section's texts, in order. Iterate it with the cyclic
    collector paused (memory.gc_paused())."""
    if snap is None:
        return [], iter(())
    return _sections(snap, openmetrics)


def _sections(snap, openmetrics: bool):
    off = getattr(snap, "disabled_families", frozenset())
    want = tuple(FAMILIES[k] not in off for k in ("resident", "generation", "generation_age", "cold", "idle_age"))
    want_idle = want[4]
    n_idle = FAMILIES["idle_age"]
    edges = tuple(snap.idle_age_buckets) + (math.inf,)
    shape = _Shape(snap.page_size, tuple(snap.cold_thresholds), edges, openmetrics, want)
    heads: list[bytes | None] = [
        _head(FAMILIES[key], HELP[_HELP_KEY[key]], "gauge", openmetrics).encode() if w else None
        for w, key in zip(want, ("resident", "generation", "generation_age", "cold"))]
    doc = HELP["idle"]
    heads.append(_head(n_idle, doc, "gaugehistogram" if openmetrics else "histogram", openmetrics).encode()
                 if want_idle else None)
    # text 0.0.4: client_python moves _gcount and _gsum to gauges after the family (when it has lines)
    lines = want_idle and not openmetrics and bool(snap.lruvecs)
    heads += [_head(n_idle + suffix, doc, "gauge", False).encode() if lines else None
              for suffix in ("_gcount", "_gsum")]
    return heads, _batches(snap.lruvecs, shape)


def _batches(lruvecs, shape: "_Shape"):
    value = _Line()
    paged = _Paged(shape.page, value)
    for at in range(0, len(lruvecs), _BATCH):
        batch = lruvecs[at:at + _BATCH]
        # runs of lruvecs with the same number of generations (nearly always one run)
        i = 0
        while i < len(batch):
            ng = len(batch[i].generations)
            j = i + 1
            while j < len(batch) and len(batch[j].generations) == ng:
                j += 1
            yield shape.lines(batch[i:j], ng, value, paged)
            i = j


_anon, _file, _age = itemgetter(2), itemgetter(3), itemgetter(1)  # Generation's fields


class _Shape:
    """What every run's lines share: the families asked for, the label pieces before memcg."""

    def __init__(self, page: int, cuts: tuple, edges: tuple, openmetrics: bool, want: tuple):
        self.page, self.openmetrics, self.want = page, openmetrics, want
        n_res, n_gen, n_age, n_cold, n_idle = (
            FAMILIES[k] for k in ("resident", "generation", "generation_age", "cold", "idle_age"))
        self.n_gen, self.n_age = n_gen, n_age
        # comparisons by the float's own method in map(): an int threshold's __le__ would not take a float
        self.cuts = [float(t) for t in cuts]
        self.edges = [float(e) for e in edges]
        # every line's first piece starts with the newline that ends the line before (_join());
        # so a value is spelled alone, and a column of floats by map(repr) (_spread())
        self.res_pre = [f'\n{n_res}{{lru="{lru}",' for lru in LRUS]
        self.cold_pre = [f'\n{n_cold}{{lru="{lru}",' for lru in LRUS for _ in cuts]
        self.cold_post = [f',threshold="{floatToGoString(t)}"}} ' for _ in LRUS for t in cuts]
        # the idle family's lines per lruvec: per lru its buckets, then (OpenMetrics) _gcount and _gsum
        self.idle_pre = [p for lru in LRUS for p in
                         [f'\n{n_idle}_bucket{{le="{floatToGoString(e)}",lru="{lru}",' for e in edges]
                         + ([f'\n{n_idle}_gcount{{lru="{lru}",', f'\n{n_idle}_gsum{{lru="{lru}",'] if openmetrics
                            else [])]
        self.count_pre = [f'\n{n_idle}_gcount{{lru="{lru}",' for lru in LRUS]
        self.sum_pre = [f'\n{n_idle}_gsum{{lru="{lru}",' for lru in LRUS]
        self._gen_pre: dict[int, tuple[list[str], list[str]]] = {}

    def gen_pre(self, ng: int) -> tuple[list[str], list[str]]:
        pre = self._gen_pre.get(ng)
        if pre is None:  # gen="0" is the youngest, the last one
            pre = self._gen_pre[ng] = (
                [f'\n{self.n_gen}{{gen="{ng - 1 - i}",lru="{lru}",' for lru in LRUS for i in range(ng)],
                [f'\n{self.n_age}{{gen="{ng - 1 - i}",' for i in range(ng)])
        return pre

    def lines(self, run, ng: int, value: "_Line", paged: "_Paged") -> list[bytes | None]:
        """The run's lines of each section (resident, generation, age, cold, idle, and for text
        0.0.4 idle's _gcount and _gsum), None for a section not written."""
        want_res, want_gen, want_age, want_cold, want_idle = self.want
        page, r, spell = self.page, len(run), value.__getitem__
        # columns of page counts, spelled as bytes (count x page) through a dict keyed by the
        # count: no column of products made first
        pages = paged.__getitem__
        out: list[bytes | None] = [None] * 7
        mn = [f'memcg="{_escape(h.memcg_path)}",numa_node="{h.node}"' for h in run]
        mnb = [m + "} " for m in mn]
        gens = list(zip(*[h.generations for h in run]))  # per generation (oldest first), the run's
        ages = [list(map(_age, g)) for g in gens]
        bounds = ages[1:] + [[0.0] * r]  # model.lru_gen.idle_lower_bounds()
        counts = ([list(map(_anon, g)) for g in gens], [list(map(_file, g)) for g in gens])
        if want_age:
            out[2] = _join((self.gen_pre(ng)[1] * r, _repeat(mnb, ng), _spread(ages, spell)))
        if want_gen:
            out[1] = _join((self.gen_pre(ng)[0] * r, _repeat(mnb, 2 * ng), _spread(counts[0] + counts[1], pages)))
        totals = [list(map(sum, zip(*c))) for c in counts]
        if want_res:
            out[0] = _join((self.res_pre * r, _repeat(mnb, 2), _spread(totals, pages)))
        if want_cold and self.cuts:
            # per threshold the generations idle at least that long (bound >= threshold)
            masks = [[list(map(t.__le__, b)) for b in bounds] for t in self.cuts]
            cols = [_masked_sum(c, m) for c in counts for m in masks]
            width = len(cols)
            out[3] = _join((self.cold_pre * r, _repeat(mn, width), self.cold_post * r, _spread(cols, pages)))
        if want_idle:
            cols, counts_col, sums_col = [], [], []
            # cumulative(): per edge the generations whose bound is at most it
            masks = [[list(map(e.__ge__, b)) for b in bounds] for e in self.edges]
            for c in counts:
                buckets = [_times(_masked_sum(c, m), page) for m in masks]
                # the sum in cumulative()'s order (oldest first, from 0): a float sum's last bits depend on it
                seconds = [0] * r
                for b, n in zip(bounds, c):
                    seconds = list(map(add, seconds, map(mul, b, n) if math.inf not in b
                                       else [x * y if x != math.inf else 0 for x, y in zip(b, n)]))
                seconds = _times(seconds, page)
                cols += buckets
                if self.openmetrics:
                    cols += (buckets[-1], seconds)
                counts_col.append(buckets[-1])
                sums_col.append(seconds)
            out[4] = _join((self.idle_pre * r, _repeat(mnb, len(cols)), _spread(cols, spell)))
            if not self.openmetrics:
                out[5] = _join((self.count_pre * r, _repeat(mnb, 2), _spread(counts_col, spell)))
                out[6] = _join((self.sum_pre * r, _repeat(mnb, 2), _spread(sums_col, spell)))
        return out


def _times(column: list, factor: int) -> list:
    return list(map(mul, column, repeat(factor, len(column))))


def _masked_sum(counts: list[list[int]], masks: list[list[bool]]) -> list[int]:
    """Per lruvec, the sum of its generations' counts where the mask is true."""
    total = map(mul, masks[0], counts[0])
    for m, n in zip(masks[1:], counts[1:]):
        total = map(add, total, map(mul, m, n))
    return list(total)


def _repeat(items: list[str], times: int) -> list[str]:
    """Each item `times` times in a row."""
    out = [None] * (len(items) * times)
    for i in range(times):
        out[i::times] = items
    return out


def _spread(columns: list[list], spell) -> list[str]:
    """Column k's i-th value spelled at i * len(columns) + k: lruvec by lruvec, its lines in order.
    Integers through `spell` (a dict: byte counts repeat, 0 above all); a column of floats
    (ages, page-seconds: nearly all distinct) by repr() where that is floatToGoString's spelling."""
    width = len(columns)
    out = [None] * (width * len(columns[0]))
    for k, column in enumerate(columns):
        out[k::width] = _floats(column) if set(map(type, column)) == _FLOAT else map(spell, column)
    return out


_FLOAT = {float}


def _floats(column: list[float]) -> list[str]:
    """floatToGoString() of each: repr() below 1e6; from there to 1e16 Go's exponent form, made
    from repr()'s digits (the page-seconds sums are nearly all there)."""
    spelled = list(map(repr, column))
    total = sum(column)
    if total == total and max(column) < 1e6 and min(column) > -math.inf:  # (total: no NaN)
        return spelled
    # floatToGoString's steps: the digits before the dot and after it, the dot after the first
    go = [(a[0] + "." + a[1:] + b).rstrip("0.") + _EXPONENT[len(a) - 1]
          for a, _, b in map(str.partition, spelled, repeat("."))]
    if total == total and min(column) >= 1e6 and max(column) < 1e16:  # all of them (no NaN): page-seconds
        return go
    return [r if -math.inf < v < 1e6 else g if 1e6 <= v < 1e16 else floatToGoString(v)
            for v, r, g in zip(column, spelled, go)]


_EXPONENT = [f"e+0{k}" for k in range(32)]  # (repr() has at most 24 characters)


def _join(columns) -> bytes:
    """Lines whose i-th pieces are columns[i] (lists of str of one length), the first piece
    starting with the newline that ends the line before: their text, each line ending in one."""
    width = len(columns)
    pieces = [None] * (width * len(columns[0]))
    for i, column in enumerate(columns):
        pieces[i::width] = column
    if not pieces:
        return b""
    pieces[0] = pieces[0][1:]
    pieces.append("\n")
    return "".join(pieces).encode()


_BATCH = 256  # lruvecs whose lines are encoded together


def _encode(lists: list[list[str]], encoded: list[list[bytes]]) -> None:
    for lines, chunks in zip(lists, encoded):
        if lines:
            chunks.append("".join(lines).encode())
            lines.clear()


_HELP_KEY = {"resident": "resident", "generation": "generation", "generation_age": "age", "cold": "cold",
             "idle_age": "idle"}
