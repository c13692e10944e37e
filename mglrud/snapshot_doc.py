"""The typed reader of /snapshot.json (snapshot_json.py writes it).

What `mglrud report`, `mglrud heatmap` and the TUI read: the JSON parsed into
frozen dataclasses with the same field names and JSON types (addresses of /proc
mappings stay hex strings, as written), so that everything reading a snapshot
reads it through this one schema. A field missing from the document (an older
daemon, or a partial document in a test) takes the default given here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

JSON_VERSION = 1


class SchemaError(ValueError):
    """The document is not a mglrud snapshot; the message names the field."""


@dataclass(frozen=True)
class SourceDoc:
    name: str
    up: bool = False
    reason: str = ""


@dataclass(frozen=True)
class TargetDoc:
    name: str
    kind: str = ""
    selector: str = ""
    memcgs: tuple[str, ...] = ()
    problem: str = ""
    last_success: float | None = None


@dataclass(frozen=True)
class GenerationDoc:
    gen: int = 0
    seq: int = 0
    age_seconds: float = 0.0
    idle_seconds_min: float = 0.0
    anon_bytes: int = 0
    file_bytes: int = 0


@dataclass(frozen=True)
class MemcgDoc:
    memcg: str = ""
    memcg_id: int = 0
    node: int = 0
    resident_bytes: dict = field(default_factory=dict)  # lru -> bytes
    cold_bytes: dict = field(default_factory=dict)  # lru -> threshold -> bytes
    generations: tuple[GenerationDoc, ...] = ()  # youngest first


@dataclass(frozen=True)
class MappingDoc:
    start: str | None  # hex; None in a redacted document (mglrud/redact.py)
    end: str | None
    name: str
    perms: str
    resident_bytes: int
    anon_bytes: int
    file_bytes: int
    swap_bytes: int
    accessed_bytes: int | None
    idle_seconds: float | None
    node_bytes: dict = field(default_factory=dict)  # node (a string, as in JSON) -> bytes
    cold_bytes: dict = field(default_factory=dict)

    @property
    def lo(self) -> int:
        return int(self.start, 16) if self.start else 0

    @property
    def hi(self) -> int:
        return int(self.end, 16) if self.end else 0

    def nodes(self) -> dict[int, int]:
        return {int(n): b for n, b in self.node_bytes.items()}


@dataclass(frozen=True)
class ProcessDoc:
    pid: int
    comm: str
    target: str
    read_at: float
    interval_seconds: float | None
    resident_bytes: int
    mappings: tuple[MappingDoc, ...] = ()
    mappings_not_resident: int = 0


@dataclass(frozen=True)
class ProcfsTargetDoc:
    name: str
    pids: tuple[int, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class ProcfsDoc:
    clear_refs: bool = False
    accessed: str = ""
    targets: tuple[ProcfsTargetDoc, ...] = ()
    processes: tuple[ProcessDoc, ...] = ()
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FoundDoc:
    seconds_ago: float
    bytes: int


@dataclass(frozen=True)
class FoundInDoc:
    seq: int
    bytes: int


@dataclass(frozen=True)
class PassDoc:
    memcg_id: int
    seq: int  # the memcg's max_seq after the pass
    at: float  # wall time of the pass
    measured: bool = True  # False: the first pass seen, what it found accumulated over an unknown time


@dataclass(frozen=True)
class RegionDoc:
    tgid: int
    memcg_id: int
    start: int
    node: int
    lru: str
    resident_bytes: int | None
    accessed_bytes: int
    accessed_bytes_total: int
    heat_bytes_per_second: float
    idle_seconds: float | None
    found: tuple[FoundDoc, ...] | None = None  # newest first; None: a daemon older than `found`
    found_in: tuple[FoundInDoc, ...] = ()  # per aging pass (PassDoc.seq of its memcg), newest first


@dataclass(frozen=True)
class AccessedDoc:
    node: int
    lru: str
    bytes: int


@dataclass(frozen=True)
class BucketDoc:
    ranges: tuple[tuple[int, ...], ...]  # (tgid, start, end)
    heat_bytes_per_second: float
    accessed_bytes: int


@dataclass(frozen=True)
class TargetHeatDoc:
    name: str
    kind: str = ""
    tgids: tuple[int, ...] = ()
    memcg_ids: tuple[int, ...] = ()
    accessed_bytes_total: tuple[AccessedDoc, ...] = ()
    buckets: tuple[BucketDoc, ...] = ()
    regions: tuple[RegionDoc, ...] = ()  # from "regions", or "region_columns" (?form=columns)


@dataclass(frozen=True)
class HotnessDoc:
    region_size: int
    event: str = ""
    half_life_seconds: float = 0.0
    events: int = 0
    matched: int = 0
    dropped: int = 0
    map_entries: int = 0
    map_capacity: int = 0
    notes: tuple[str, ...] = ()
    targets: tuple[TargetHeatDoc, ...] = ()
    passes: tuple[PassDoc, ...] | None = None  # newest first; None: a daemon older than passes


@dataclass(frozen=True)
class SnapshotDoc:
    version: int = JSON_VERSION
    taken_at: float = 0.0
    page_size: int = 4096
    cold_thresholds_seconds: tuple[float, ...] = ()
    sources: tuple[SourceDoc, ...] = ()
    targets: tuple[TargetDoc, ...] = ()
    memcgs: tuple[MemcgDoc, ...] = ()
    aging: dict = field(default_factory=dict)
    procfs: ProcfsDoc | None = None
    hotness: HotnessDoc | None = None
    redacted: bool = False  # no addresses, file names or regions: mglrud/redact.py

    def target_names(self) -> set[str]:
        names = {t.name for t in self.targets}
        names |= {t.name for t in self.procfs.targets} if self.procfs else set()
        names |= {t.name for t in self.hotness.targets} if self.hotness else set()
        return names

    def processes(self, target: str | None = None, pid: int | None = None) -> list[ProcessDoc]:
        """The /proc part's processes of `target` (any: None) and `pid` (any: None)."""
        return [p for p in (self.procfs.processes if self.procfs else ())
                if (target is None or p.target == target) and (pid is None or p.pid == pid)]

    def regions(self, target: str | None = None, pid: int | None = None) -> dict[tuple[int, int], list[RegionDoc]]:
        """The BPF part's region cells of `target` (any: None) and `pid` (any: None), per (tgid, start)."""
        out: dict[tuple[int, int], list[RegionDoc]] = {}
        for t in self.hotness.targets if self.hotness else ():
            if target is None or t.name == target:
                for r in t.regions:
                    if pid is None or r.tgid == pid:
                        out.setdefault((r.tgid, r.start), []).append(r)
        return out


def _build(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where}: no field {f.name!r}")
        return tp(**kwargs)
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        return None if value is None else _build(next(a for a in args if a is not type(None)), value, where)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    return value  # int, float, str, bool, dict: as JSON has them


def _rows(cols, where: str) -> list[dict]:
    """region_columns (?form=columns: one list per RegionDoc field; found and found_in flat
    [a, b, a, b, ...] pairs) -> the "regions" list of the rows form."""
    names = [f.name for f in dataclasses.fields(RegionDoc)]
    if not isinstance(cols, dict):
        raise SchemaError(f"{where}: expected an object, got {type(cols).__name__}")
    for n in names:
        if not isinstance(cols.get(n), list) or len(cols[n]) != len(cols.get("tgid") or ()):
            raise SchemaError(f"{where}.{n}: expected a list as long as tgid")
    rows = [dict(zip(names, row)) for row in zip(*(cols[n] for n in names))]
    for i, r in enumerate(rows):
        for name, a, b in (("found", "seconds_ago", "bytes"), ("found_in", "seq", "bytes")):
            flat = r[name]
            if not isinstance(flat, list) or len(flat) % 2:
                raise SchemaError(f"{where}.{name}[{i}]: expected a flat list of pairs")
            r[name] = [{a: x, b: y} for x, y in zip(flat[0::2], flat[1::2])]
    return rows


def from_dict(doc: dict) -> SnapshotDoc:
    """A decoded /snapshot.json -> SnapshotDoc; raises SchemaError naming the first bad field."""
    hot = doc.get("hotness") if isinstance(doc, dict) else None
    targets = hot.get("targets") if isinstance(hot, dict) else None
    if isinstance(targets, list) and any(isinstance(t, dict) and "region_columns" in t for t in targets):
        targets = [{k: v for k, v in t.items() if k != "region_columns"} | {
                   "regions": list(t.get("regions") or ()) + _rows(t["region_columns"],
                                                                    f"snapshot.hotness.targets[{i}].region_columns")}
                   if isinstance(t, dict) and "region_columns" in t else t for i, t in enumerate(targets)]
        doc = {**doc, "hotness": {**hot, "targets": targets}}
    return _build(SnapshotDoc, doc, "snapshot")


def read(snap: "SnapshotDoc | dict") -> SnapshotDoc:
    """What the renderers take: a SnapshotDoc as it is, a decoded document parsed."""
    return snap if isinstance(snap, SnapshotDoc) else from_dict(snap)
