"""YAML configuration -> validated, frozen objects.

Every error is a ConfigError naming the dotted key that is wrong
(`targets[1].memcg`) and what is wrong with it; unknown keys are errors, so a
typo never silently falls back to a default. Built-in defaults make the file
optional. config.example.yaml documents every key; docs/config.md is the
reference.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The kernel keeps at most MAX_NR_GENS generations per lruvec (include/linux/mmzone.h);
# aging folds the oldest into the next, so no page is seen idle longer than
# (MAX_NR_GENS - 1) aging intervals.
MAX_NR_GENS = 4

DEFAULT_PORT = 9746
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"  # where `mglrud report` and `heatmap` find the daemon
LOG_LEVELS = ("debug", "info", "warning", "error")
UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap", ".target")
SELECTORS = ("memcg", "pid", "comm", "cmdline", "unit")


class ConfigError(Exception):
    """A configuration value is wrong; `key` is its dotted path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Listen:
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # A root-only unix socket serving the full view (addresses, file names: mglrud/redact.py); "" for none
    socket: str = ""


@dataclass(frozen=True)
class Aging:
    interval: float = 60.0
    can_swap: bool = True
    force_scan: bool = True
    dry_run: bool = False


@dataclass(frozen=True)
class Metrics:
    cold_thresholds: tuple[float, ...] = (30.0, 60.0, 120.0)
    # Empty means: use cold_thresholds as the histogram's bucket edges.
    idle_age_buckets: tuple[float, ...] = ()

    @property
    def buckets(self) -> tuple[float, ...]:
        return self.idle_age_buckets or self.cold_thresholds


@dataclass(frozen=True)
class Paths:
    procfs: str = "/proc"
    sysfs: str = "/sys"
    debugfs: str = "/sys/kernel/debug"
    cgroupfs: str = "/sys/fs/cgroup"
    tracefs: str = "/sys/kernel/tracing"


@dataclass(frozen=True)
class Target:
    """One `targets[]` entry with the global aging settings folded in."""

    name: str
    kind: str  # one of SELECTORS
    value: str | int
    interval: float
    can_swap: bool
    force_scan: bool
    # memcg globs and cmdline regexes, compiled once here.
    pattern: re.Pattern | None = field(default=None, compare=False)
    # Requirements a process must also meet (`uid:`, `cgroup:`): a comm or command line is chosen
    # by whoever starts the process, so any local user can name one like the target.
    uid: int | None = None
    cgroup: str = ""
    cgroup_pattern: re.Pattern | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Procfs:
    """The /proc source (sources/procfs.py): what it reads per target and whether it clears refs."""

    max_processes: int = 5  # per target: the largest by RSS
    top_mappings: int = 10  # per target: own series; the rest summed as mapping="other"
    clear_refs: bool = True


@dataclass(frozen=True)
class Bpf:
    """The BPF hotness source (sources/bpf_hotness.py, bpf/hotness.bpf.c)."""

    region_size: int = 2 << 20  # bytes; a power of two
    half_life: float = 300.0  # seconds, of the access-frequency EWMA
    heat_buckets: int = 64  # buckets of the address-offset histogram per process target
    max_regions: int = 65536  # entries of the in-kernel map (tgid, memcg, region, node, lru)
    max_processes: int = 10  # per target: processes whose residency (pagemap) is read
    program: str = ""  # the .bpf.c file; empty: bpf/hotness.bpf.c beside the package

    @property
    def region_shift(self) -> int:
        return self.region_size.bit_length() - 1




@dataclass(frozen=True)
class Config:
    listen: Listen = Listen()
    aging: Aging = Aging()
    snapshot_interval: float = 10.0
    metrics: Metrics = Metrics()
    targets: tuple[Target, ...] = ()
    paths: Paths = Paths()
    log_level: str = "info"
    source: str = "(built-in defaults)"
    sources: str | tuple[str, ...] = "auto"  # "auto" or names from the table in mglrud/sources/
    procfs: Procfs = Procfs()
    bpf: Bpf = Bpf()
    web_config_file: str = ""  # exporter-toolkit web config (mglrud/webconfig.py); empty: plain HTTP


DEFAULT_TARGETS = [{"name": "all", "memcg": "/**"}]


# ---------------------------------------------------------------- scalars

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(text: Any, key: str) -> float:
    """'30s', '5m', '1h', '1m30s', '500ms' -> seconds (> 0)."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ConfigError(key, f"must be a duration with a unit like 30s, 5m or 1h, got {text!r}")
    if text.startswith("-"):
        raise ConfigError(key, f"must be longer than zero, got {text!r}")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ConfigError(key, f"must be a duration with a unit like 30s, 5m or 1h, got {text!r}")
    if total <= 0:
        raise ConfigError(key, f"must be longer than zero, got {text!r}")
    if total > MAX_DURATION:  # beyond any sensible schedule, and past what timers accept
        raise ConfigError(key, f"must be at most {format_duration(MAX_DURATION)}, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for messages: 90 -> '1m30s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = "", seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            n = int(rest // size)
            out += f"{n}{unit}"
            rest -= n * size
    if rest or not out:
        out += f"{rest:g}s"
    return out


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, f"must be true or false, got {v!r}")
    return v


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(key, f"must be a non-empty string, got {v!r}")
    return v


def _int(v: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(key, f"must be an integer from {lo} to {hi}, got {v!r}")
    return v


def _mapping(v: Any, key: str, known: tuple[str, ...]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(key, f"must be a mapping of {', '.join(known)}, got {type(v).__name__}")
    for k in v:
        if k not in known:
            raise ConfigError(_join(key, str(k)), f"unknown key; known keys here: {', '.join(known)}")
    return v


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _durations(v: Any, key: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(key, f"must be a non-empty list of durations like [30s, 1m], got {v!r}")
    if len(v) > 16:
        raise ConfigError(key, f"at most 16 entries (each one multiplies the series per memcg), got {len(v)}")
    out = [parse_duration(x, f"{key}[{i}]") for i, x in enumerate(v)]
    for i, x in enumerate(out):
        if x in out[:i]:
            raise ConfigError(f"{key}[{i}]", f"{v[i]} is listed twice")
    return tuple(sorted(out))


# ---------------------------------------------------------------- memcg globs

def memcg_glob(pattern: str) -> re.Pattern:
    """A cgroup path glob: * and ? stay inside one path component, ** spans any number.

    Match it with memcg_matches(): the root cgroup "/" is matched as "" so that
    "/**" covers the root and everything below it.
    """
    out = ""
    for part in (p for p in pattern.split("/") if p):
        if part == "**":
            out += "(?:/[^/]+)*"
        elif "**" in part:
            raise ValueError("** must be a whole path component, as in /system.slice/**")
        else:
            out += "/" + "".join(
                "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
    return re.compile(out)


def memcg_matches(pattern: re.Pattern, path: str) -> bool:
    return pattern.fullmatch("" if path == "/" else path) is not None


# ---------------------------------------------------------------- sections

def _listen(v: Any) -> Listen:
    v = _mapping(v, "listen", ("address", "port", "socket"))
    address = _str(v.get("address", Listen.address), "listen.address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError("listen.address", f"must be an IP address like 127.0.0.1 or ::1, got {address!r}") from None
    port = _int(v.get("port", Listen.port), "listen.port", 1, 65535)
    sock = v.get("socket", Listen.socket)
    if not isinstance(sock, str) or sock and (not sock.startswith("/") or "\0" in sock or len(sock.encode()) > 107):
        raise ConfigError("listen.socket", f"must be an absolute path of at most 107 bytes (a unix socket), "
                                           f"or empty for none, got {sock!r}")
    return Listen(address, port, sock)


def _aging(v: Any) -> Aging:
    v = _mapping(v, "aging", ("interval", "can_swap", "force_scan", "dry_run"))
    interval = parse_duration(v["interval"], "aging.interval") if "interval" in v else Aging.interval
    return Aging(
        interval=interval,
        can_swap=_bool(v.get("can_swap", Aging.can_swap), "aging.can_swap"),
        force_scan=_bool(v.get("force_scan", Aging.force_scan), "aging.force_scan"),
        dry_run=_bool(v.get("dry_run", Aging.dry_run), "aging.dry_run"),
    )


def _metrics(v: Any, aging: Aging) -> Metrics:
    v = _mapping(v, "metrics", ("cold_thresholds", "idle_age_buckets"))
    thresholds = (_durations(v["cold_thresholds"], "metrics.cold_thresholds")
                  if "cold_thresholds" in v else Metrics.cold_thresholds)
    reach = (MAX_NR_GENS - 1) * aging.interval
    for i, t in enumerate(thresholds):
        if t > reach:
            raise ConfigError(
                f"metrics.cold_thresholds[{i}]",
                f"{format_duration(t)} can never be reached: with {MAX_NR_GENS} generations aged every "
                f"{format_duration(aging.interval)}, no page is seen idle longer than {format_duration(reach)}; "
                f"raise aging.interval or lower this threshold")
    buckets = (_durations(v["idle_age_buckets"], "metrics.idle_age_buckets")
               if "idle_age_buckets" in v else ())
    return Metrics(thresholds, buckets)


def _paths(v: Any) -> Paths:
    names = tuple(f.name for f in dataclasses.fields(Paths))
    v = _mapping(v, "paths", names)
    out = {}
    for name in names:
        if name in v:
            p = _str(v[name], f"paths.{name}")
            if not p.startswith("/") or "\0" in p:
                raise ConfigError(f"paths.{name}", f"must be an absolute path, got {p!r}")
            out[name] = p
    return Paths(**out)


def _target(v: Any, i: int, aging: Aging) -> Target:
    key = f"targets[{i}]"
    v = _mapping(v, key, ("name",) + SELECTORS + ("interval", "can_swap", "force_scan", "uid", "cgroup"))
    chosen = [s for s in SELECTORS if s in v]
    if len(chosen) != 1:
        raise ConfigError(key, f"needs exactly one of {', '.join(SELECTORS)}, got "
                               f"{', '.join(chosen) if chosen else 'none'}")
    kind = chosen[0]
    k = f"{key}.{kind}"
    raw = v[kind]
    pattern = None
    if kind == "pid":
        value: str | int = _int(raw, k, 1, 2**22)
    else:
        value = _str(raw, k)
    if kind == "memcg":
        if not value.startswith("/"):
            raise ConfigError(k, f"must be a cgroup v2 path starting with '/', like /system.slice/*.service, got {value!r}")
        if any(part in (".", "..") for part in value.split("/")):
            raise ConfigError(k, f"must not contain '.' or '..' components (memcgs are matched by their "
                                 f"canonical path), got {value!r}")
        try:
            pattern = memcg_glob(value)
        except ValueError as e:
            raise ConfigError(k, str(e)) from None
    elif kind == "comm" and len(value) > 15:
        raise ConfigError(k, f"is longer than the 15 characters the kernel keeps in /proc/PID/comm: {value!r}; "
                             f"use cmdline for longer names")
    elif kind == "cmdline":
        try:
            pattern = re.compile(value)
        except re.error as e:
            raise ConfigError(k, f"is not a valid regular expression: {e}") from None
    elif kind == "unit" and ("/" in value or not value.endswith(UNIT_SUFFIXES)):
        raise ConfigError(k, f"must be a systemd unit name like nginx.service (ending in one of "
                             f"{', '.join(UNIT_SUFFIXES)}), got {value!r}")
    uid, cgroup, cgroup_pattern = _requirements(v, key, kind)
    name = _str(v["name"], f"{key}.name") if "name" in v else f"{kind}:{value}"
    return Target(
        name=name,
        kind=kind,
        value=value,
        interval=parse_duration(v["interval"], f"{key}.interval") if "interval" in v else aging.interval,
        can_swap=_bool(v.get("can_swap", aging.can_swap), f"{key}.can_swap"),
        force_scan=_bool(v.get("force_scan", aging.force_scan), f"{key}.force_scan"),
        pattern=pattern,
        uid=uid, cgroup=cgroup, cgroup_pattern=cgroup_pattern,
    )


def _requirements(v: dict, key: str, kind: str) -> tuple[int | None, str, re.Pattern | None]:
    """A process target's `uid:` and `cgroup:` (a memcg-style glob): what its processes must also have."""
    for req in ("uid", "cgroup"):
        if req in v and kind == "memcg":
            raise ConfigError(f"{key}.{req}", "applies to process targets (pid, comm, cmdline, unit); a memcg "
                                              "target already selects by cgroup")
    uid = _int(v["uid"], f"{key}.uid", 0, 2**32 - 2) if "uid" in v else None
    if "cgroup" not in v:
        return uid, "", None
    cgroup = _str(v["cgroup"], f"{key}.cgroup")
    if not cgroup.startswith("/") or any(part in (".", "..") for part in cgroup.split("/")):
        raise ConfigError(f"{key}.cgroup", f"must be a cgroup v2 path (globs allowed) starting with '/' and "
                                           f"without '.' or '..', like /system.slice/app.service, got {cgroup!r}")
    try:
        return uid, cgroup, memcg_glob(cgroup)
    except ValueError as e:
        raise ConfigError(f"{key}.cgroup", str(e)) from None


def _targets(v: Any, aging: Aging) -> tuple[Target, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError("targets", "must be a non-empty list; leave the key out to age every memcg")
    out = [_target(t, i, aging) for i, t in enumerate(v)]
    for i, t in enumerate(out):
        for j in range(i):
            if out[j].name == t.name:
                raise ConfigError(f"targets[{i}].name", f"{t.name!r} is already the name of targets[{j}]")
    return tuple(out)


def _sources(v: Any) -> str | tuple[str, ...]:
    # The data sources `sources:` can name: the table of mglrud/sources/ (imported here, when
    # used: the sources import this module); "auto" picks among them (sources/selection.py).
    from mglrud.sources import names

    SOURCE_NAMES = names()
    if v == "auto":
        return "auto"
    if not isinstance(v, list) or not v:
        raise ConfigError("sources", f"must be auto or a non-empty list of {', '.join(SOURCE_NAMES)}, got {v!r}")
    for i, name in enumerate(v):
        if name not in SOURCE_NAMES:
            raise ConfigError(f"sources[{i}]", f"must be one of {', '.join(SOURCE_NAMES)}, got {name!r}")
        if name in v[:i]:
            raise ConfigError(f"sources[{i}]", f"{name} is listed twice")
    return tuple(v)


def _procfs(v: Any) -> Procfs:
    v = _mapping(v, "procfs", ("max_processes", "top_mappings", "clear_refs"))
    return Procfs(
        max_processes=_int(v.get("max_processes", Procfs.max_processes), "procfs.max_processes", 1, 100),
        top_mappings=_int(v.get("top_mappings", Procfs.top_mappings), "procfs.top_mappings", 1, 100),
        clear_refs=_bool(v.get("clear_refs", Procfs.clear_refs), "procfs.clear_refs"),
    )


_SIZE = re.compile(r"(\d+)([KMG]i?B?|)")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(v: Any, key: str) -> int:
    """'2M', '2MiB', '4096', 2097152 -> bytes."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.fullmatch(v) if isinstance(v, str) else None
    if not m:
        raise ConfigError(key, f"must be a size like 2M, 512K or 1G, got {v!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)[:1]]


def _bpf(v: Any) -> Bpf:
    v = _mapping(v, "bpf", ("region_size", "half_life", "heat_buckets", "max_regions", "max_processes",
                            "program"))
    size = parse_size(v.get("region_size", Bpf.region_size), "bpf.region_size")
    if size < 4096 or size > 1 << 30 or size & (size - 1):
        raise ConfigError("bpf.region_size", f"must be a power of two from 4K to 1G, got {v.get('region_size')!r}")
    program = v.get("program", Bpf.program)
    if program != "" and (not isinstance(program, str) or not program.startswith("/")):
        raise ConfigError("bpf.program", f"must be an absolute path to a .bpf.c file, got {program!r}")
    return Bpf(
        region_size=size,
        half_life=parse_duration(v["half_life"], "bpf.half_life") if "half_life" in v else Bpf.half_life,
        heat_buckets=_int(v.get("heat_buckets", Bpf.heat_buckets), "bpf.heat_buckets", 4, 256),
        max_regions=_int(v.get("max_regions", Bpf.max_regions), "bpf.max_regions", 1024, 1 << 22),
        max_processes=_int(v.get("max_processes", Bpf.max_processes), "bpf.max_processes", 1, 1000),
        program=program,
    )


TOP_KEYS = ("listen", "aging", "snapshot", "metrics", "targets", "paths", "log", "sources", "procfs", "bpf",
            "web_config_file")


def _web_config_file(v: Any) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise ConfigError("web_config_file", f"must be an absolute path to an exporter-toolkit web config, got {v!r}")
    return v


def from_dict(doc: Any, source: str = "(built-in defaults)") -> Config:
    """Validate a parsed YAML document (None means an empty file)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("(top level)", f"must be a mapping with keys like {', '.join(TOP_KEYS)}, "
                                         f"got {type(doc).__name__}")
    doc = _mapping(doc, "", TOP_KEYS)
    aging = _aging(doc.get("aging"))
    snap = _mapping(doc.get("snapshot"), "snapshot", ("interval",))
    log = _mapping(doc.get("log"), "log", ("level",))
    level = log.get("level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError("log.level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return Config(
        listen=_listen(doc.get("listen")),
        aging=aging,
        snapshot_interval=(parse_duration(snap["interval"], "snapshot.interval")
                           if "interval" in snap else Config.snapshot_interval),
        metrics=_metrics(doc.get("metrics"), aging),
        targets=_targets(doc.get("targets", DEFAULT_TARGETS), aging),
        paths=_paths(doc.get("paths")),
        log_level=level,
        source=source,
        sources=_sources(doc["sources"]) if "sources" in doc else Config.sources,
        procfs=_procfs(doc.get("procfs")),
        bpf=_bpf(doc.get("bpf")),
        web_config_file=_web_config_file(doc.get("web_config_file")),
    )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def loads(text: str, source: str = "(string)") -> Config:
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, f"is not valid YAML: {where}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, f"is not valid YAML: {e}") from None
    return from_dict(doc, source)


def load(path: str | None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return from_dict(None)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None
    return loads(text, path)
