"""The data model: immutable dataclasses and the pure maths on them; no I/O, no prometheus_client.

    snapshot.py   the Snapshot one cycle publishes, source statuses, targets, aging counters
    lru_gen.py    generation histograms per memcg and node (sources/lru_gen.py)
    procfs.py     mappings per process (sources/procfs.py)
    hotness.py    per-region heat found by the aging walk (sources/bpf_hotness.py)
    histogram.py  the cumulative idle-age step they share
    workload.py   the unit, pod and container a memcg path names (systemd, docker, podman, kubelet)
"""

from mglrud.model.snapshot import AgingStats, Snapshot, SourceStatus, TargetState

__all__ = ["AgingStats", "Snapshot", "SourceStatus", "TargetState"]
