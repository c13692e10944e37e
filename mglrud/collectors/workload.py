"""`mglrud_memcg_info`: one info series per memcg naming its workload (mglrud/model/workload.py).

One series per memcg, not new labels on every memcg series: the unit, pod UID,
container ID and QoS class are joined in PromQL where they are wanted
(`* on (job, instance, memcg) group_left (pod_uid) mglrud_memcg_info`; the
recording rules in deploy/prometheus/rules/mglrud-kubernetes.rules.yml do it
with kube-state-metrics' pods), so the other families keep their cardinality
and their series do not change when a path is parsed differently.

Wiring: `families(snap)` follows the other family modules; add this module to
the tuple in collectors/__init__.py's families() next to memcg.
"""

from __future__ import annotations

import threading
from typing import Iterable

from prometheus_client.core import InfoMetricFamily

from mglrud.model import workload

HELP = ("Workload of each memcg, parsed from its cgroup path (value always 1): the innermost systemd unit, "
        "the Kubernetes pod UID and QoS class (kubelet, systemd or cgroupfs driver), the container ID "
        "(containerd, CRI-O, docker, podman). Empty where the path does not say. Join on memcg.")
INFO_LABELS = ("unit", "pod_uid", "container_id", "qos_class")
# metrics.disable key -> the family (an info family's name has no _info: client_python appends it;
# mglrud/config/ takes mglrud_memcg_info too).
FAMILIES = {"memcg_info": "mglrud_memcg"}


def memcg_info(memcgs: Iterable[str]) -> InfoMetricFamily:
    """The info family for these memcg paths (duplicates, e.g. one per NUMA node, are merged)."""
    family = InfoMetricFamily("mglrud_memcg", HELP, labels=["memcg"])  # client_python appends _info
    for path in sorted(set(memcgs)):
        w = workload.parse(path)
        family.add_metric([path], {k: getattr(w, k) for k in INFO_LABELS})
    return family


def families(snap):
    """The collectors' seam (mglrud/collectors/__init__.py): the info family of the Snapshot's memcgs."""
    if snap is None or not snap.lruvecs:
        return
    yield memcg_info(h.memcg_path for h in snap.lruvecs)


# ---------------------------------------------------------------- the text, written directly

class _Lines:
    """Each memcg path's info line, as client_python's encoder writes it, kept between renders.

    Why: the line depends on the path alone, and client_python took ~13 us a series over the
    path's parse and its labels dict: 30-40 ms of every render at 3,000 memcgs, the same
    lines each time. A render keeps the lines of its own paths only (a path gone from the
    snapshot is forgotten at the next render), so the cache holds one snapshot's lines:
    ~0.6 MiB at 3,000 memcgs per format asked for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lines: dict[tuple[str, bool], bytes] = {}

    def chunks(self, snap, openmetrics: bool) -> list[bytes]:
        if snap is None or not snap.lruvecs:
            return []
        from mglrud import exposition  # (exposition imports collectors)
        with self._lock:
            old = self._lines
        kept: dict[tuple[str, bool], bytes] = {}
        out = [_head(openmetrics)]
        for path in sorted({h.memcg_path for h in snap.lruvecs}):
            key = (path, openmetrics)
            line = old.get(key)
            if line is None:
                text = exposition.encode([memcg_info([path])], openmetrics)
                line = text[text.index(b"\n", text.index(b"\n") + 1) + 1:]  # after HELP and TYPE
            kept[key] = line
            out.append(line)
        with self._lock:  # the other format's lines stay (a render of one format keeps its own)
            self._lines = {**{k: v for k, v in self._lines.items() if k[1] != openmetrics}, **kept}
        return [b"".join(out)]  # one piece: a plain body is written piece by piece (a send each)


def _head(openmetrics: bool) -> bytes:
    from mglrud import exposition
    return exposition.encode([InfoMetricFamily("mglrud_memcg", HELP, labels=["memcg"])], openmetrics)


LINES = _Lines()


def chunks(snap, openmetrics: bool = False) -> list[bytes]:
    """families(snap)'s text, the same bytes as client_python's encoders (tests/unit/test_exposition.py)."""
    return LINES.chunks(snap, openmetrics)
