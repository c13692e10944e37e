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

from typing import Iterable

from prometheus_client.core import InfoMetricFamily

from mglrud.model import workload

HELP = ("Workload of each memcg, parsed from its cgroup path (value always 1): the innermost systemd unit, "
        "the Kubernetes pod UID and QoS class (kubelet, systemd or cgroupfs driver), the container ID "
        "(containerd, CRI-O, docker, podman). Empty where the path does not say. Join on memcg.")
INFO_LABELS = ("unit", "pod_uid", "container_id", "qos_class")


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
