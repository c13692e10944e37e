"""The /proc source's data (sources/procfs.py): mappings per process, and the pure maths on them.

Where lru_gen knows generations per memcg and node, /proc knows mappings per
process: a mapping's resident, anon and file bytes (smaps), its NUMA node split
(numa_maps), the bytes accessed during the latest interval (smaps `Referenced`
after a clear_refs), and from consecutive intervals how long the mapping has
gone without any access. These classes carry that from the source to the
collectors and the JSON endpoint; the functions below derive what both render,
so they agree.

Idle time here follows model/lru_gen.py's convention: it is a lower bound that errs by
at most one interval. A byte that was not referenced during the latest interval
has been idle at least that interval's length; a mapping with no referenced byte
since the end of interval j has been idle at least `now - end of j`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mglrud.model.histogram import cumulative

# Label value for everything outside a target's top-K mappings.
OTHER = "other"


@dataclass(frozen=True)
class MappingHeat:
    start: int
    end: int
    name: str  # stable: a path without " (deleted)", [heap], [stack], [anon], [anon:NAME], ...
    perms: str  # "rw-p"
    resident_bytes: int
    anon_bytes: int  # on the anon LRU: anonymous pages, and shmem/memfd/SysV pages (swap-backed)
    file_bytes: int  # resident_bytes - anon_bytes: page cache pages reclaim can drop or write back
    swap_bytes: int
    # Bytes referenced during the latest interval; None before the first complete interval.
    accessed_bytes: int | None
    # Lower bound on the time since any byte of the mapping was last referenced; None before
    # the first complete interval. 0 when accessed_bytes > 0.
    idle_seconds: float | None
    node_bytes: tuple[tuple[int, int], ...] = ()  # (node, resident bytes), ascending node

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ProcessHeat:
    pid: int
    comm: str
    target: str  # the configured target's name: the label metrics use, never the pid
    read_at: float  # wall-clock time of the smaps read
    # Seconds between the clear_refs that began the latest interval and this read;
    # None on the first read of a process (Referenced then counts since an unknown time).
    interval_seconds: float | None
    mappings: tuple[MappingHeat, ...] = ()

    @property
    def resident_bytes(self) -> int:
        return sum(m.resident_bytes for m in self.mappings)


@dataclass(frozen=True)
class ProcfsTarget:
    name: str
    pids: tuple[int, ...]  # the processes read for it in the latest cycle
    problem: str = ""  # why some or all of its processes could not be read, as a sentence


@dataclass(frozen=True)
class ProcfsStats:
    """Cumulative since start; these back counters, so they never go down."""

    reads: int = 0  # processes whose smaps was read and cleared
    errors: tuple[tuple[str, int], ...] = ()  # (reason, count), every known reason listed
    read_seconds: float = 0.0  # time spent reading smaps and numa_maps
    clear_seconds: float = 0.0  # time spent writing clear_refs
    bytes_scanned: int = 0  # resident bytes of the processes read: the cost driver


@dataclass(frozen=True)
class ProcfsData:
    processes: tuple[ProcessHeat, ...] = ()
    targets: tuple[ProcfsTarget, ...] = ()
    stats: ProcfsStats = field(default_factory=ProcfsStats)
    top_mappings: int = 10
    clear_refs: bool = False  # procfs.clear_refs: off, no accessed bytes, idle or cold times


# ---------------------------------------------------------------- derived values

@dataclass(frozen=True)
class MappingGroup:
    """Mappings of one target summed under one (comm, name) label pair; `other` holds the rest."""

    target: str
    comm: str
    name: str
    resident: dict  # lru -> bytes
    accessed: int | None
    node_bytes: dict  # (node, lru) -> bytes
    mappings: tuple[tuple[MappingHeat, float | None], ...]  # with their process's interval_seconds


def mapping_lru_bytes(m: MappingHeat) -> dict[str, int]:
    return {"anon": m.anon_bytes, "file": m.file_bytes}


def lru_share(m: MappingHeat, n: int) -> dict[str, int]:
    """Split n of the mapping's bytes between anon and file in the mapping's proportion (see below)."""
    anon = min(round(n * m.anon_bytes / m.resident_bytes), n) if m.resident_bytes else 0
    return {"anon": anon, "file": n - anon}


def mapping_node_lru_bytes(m: MappingHeat) -> dict[tuple[int, str], int]:
    """Split each node's bytes between anon and file in the mapping's overall proportion.

    numa_maps counts pages per node but does not split them by LRU the way smaps
    does; within one mapping the two are almost always the same kind (a private
    file mapping's COW pages are the exception), so the proportional split is
    exact for all but those.
    """
    nodes = m.node_bytes or ((0, m.resident_bytes),)
    out: dict[tuple[int, str], int] = {}
    for node, b in nodes:
        for lru, part in lru_share(m, b).items():
            out[(node, lru)] = part
    return out


def cold_bytes(m: MappingHeat, threshold: float, interval: float | None) -> int:
    """Resident bytes idle at least `threshold` seconds, a lower bound (see module docstring)."""
    if m.idle_seconds is None or interval is None:
        return 0
    if m.idle_seconds >= threshold:
        return m.resident_bytes
    if interval >= threshold:
        return max(m.resident_bytes - (m.accessed_bytes or 0), 0)
    return 0


def group_mappings(procs: tuple[ProcessHeat, ...], target: str, top: int) -> list[MappingGroup]:
    """One target's mappings grouped by (comm, name): the `top` largest by resident bytes, then OTHER.

    This is what bounds the procfs metrics: at most top + 1 label pairs per target,
    whatever the processes map.
    """
    groups: dict[tuple[str, str], list[tuple[MappingHeat, float | None]]] = {}
    for p in procs:
        if p.target != target:
            continue
        for m in p.mappings:
            groups.setdefault((p.comm, m.name), []).append((m, p.interval_seconds))
    ranked = sorted(groups.items(), key=lambda kv: (-sum(m.resident_bytes for m, _ in kv[1]), kv[0]))
    kept, rest = ranked[:top], [pair for _, pairs in ranked[top:] for pair in pairs]
    out = [_group(target, comm, name, ms) for (comm, name), ms in kept]
    if rest:
        out.append(_group(target, "", OTHER, rest))
    return out


def _group(target: str, comm: str, name: str, ms: list[tuple[MappingHeat, float | None]]) -> MappingGroup:
    resident = {"anon": 0, "file": 0}
    nodes: dict[tuple[int, str], int] = {}
    accessed: int | None = 0
    for m, _ in ms:
        for lru, b in mapping_lru_bytes(m).items():
            resident[lru] += b
        for k, b in mapping_node_lru_bytes(m).items():
            nodes[k] = nodes.get(k, 0) + b
        if m.accessed_bytes is None:
            accessed = None
        elif accessed is not None:
            accessed += m.accessed_bytes
    return MappingGroup(target, comm, name, resident, accessed, nodes, tuple(ms))


def idle_histogram(ms: tuple[tuple[MappingHeat, float | None], ...], edges: tuple[float, ...], lru: str | None = None
                   ) -> tuple[list[tuple[float, int]], float]:
    """Cumulative resident bytes per `le` edge (ending with +Inf) by idle lower bound, and the byte-seconds sum.

    Accessed bytes count as idle 0; the rest of a mapping counts as idle for the
    mapping's idle time or, if it was accessed in the latest interval, for that
    interval's length. Mappings without a complete interval yet are left out.
    With `lru`, only that LRU's share of each mapping (lru_share) is counted.
    """
    points: list[tuple[float, int]] = []
    for m, interval in ms:
        if m.idle_seconds is None or interval is None:
            continue
        accessed = min(m.accessed_bytes or 0, m.resident_bytes)
        if m.idle_seconds > 0:
            parts = [(m.idle_seconds, m.resident_bytes)]
        else:
            parts = [(0.0, accessed), (interval, m.resident_bytes - accessed)]
        for idle, b in parts:
            points.append((idle, lru_share(m, b)[lru] if lru else b))
    return cumulative(points, edges)
