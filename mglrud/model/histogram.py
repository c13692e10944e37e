"""The one step every idle-age histogram ends in, and the metrics' spelling of seconds.

Each source knows idle time differently (a generation's age, a mapping's
unreferenced intervals, the aging passes that found a region), but all of them
end as points (idle seconds lower bound, amount) turned into a cumulative
histogram with Prometheus `le` semantics.
"""

from __future__ import annotations

import math
from typing import Iterable


def cumulative(points: Iterable[tuple[float, int]], edges: Iterable[float]) -> tuple[list[tuple[float, int]], float]:
    """(idle seconds, amount) points -> the cumulative amount per `le` edge (then +Inf), and
    the sum of amount x seconds over the points with a finite idle time."""
    points = list(points)
    buckets = [(edge, sum(n for i, n in points if i <= edge)) for edge in tuple(edges) + (math.inf,)]
    return buckets, sum(i * n for i, n in points if i != math.inf)


def go_float(d: float) -> str:
    """A float as Prometheus' Go code spells it in `le` and `threshold` labels (Go switches to
    an exponent sooner than Python's repr). The same result as client_python's
    floatToGoString, kept here so that the model needs no prometheus_client."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s
