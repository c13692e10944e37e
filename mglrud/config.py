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
import os
import re
import stat
from dataclasses import dataclass, field
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


# Bounds on what a config file may make the loader do (issue 18): a config is a few KiB
# and a few levels deep; anything far beyond is an accident or an attack, refused in
# bounded time and memory before it is validated.
MAX_CONFIG_BYTES = 256 << 10
MAX_DEPTH = 32  # nesting of lists and mappings, aliases expanded; mglrud's own schema needs 4
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded ("billion laughs")
MAX_INT_DIGITS = 40  # a longer integer is shown by its length, never converted (int() limits at 4300)
MAX_TARGETS = 1000  # each target is series per memcg or process: far beyond any host's need
MIN_INTERVAL = 1.0  # seconds, for aging, snapshot and target intervals and the BPF half-life
MIN_DURATION = 0.001  # seconds, any other duration: the finest unit a duration takes
_MAX_KEY_CHARS, _MAX_MESSAGE_CHARS = 256, 320  # a path can be the key


def escape(text: str) -> str:
    """`text` with every character that is not printable (control characters, NUL, newlines,
    ANSI escapes, bidi overrides) as a Python escape, so that a message stays one honest line."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif c in "\n\r\t":
            out.append(repr(c)[1:-1])
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ConfigError(Exception):
    """A configuration value is wrong; `key` is its dotted path.

    Both parts are escaped and shortened: str(e) is one printable line of bounded length
    whatever the file held (a key with a newline must not forge a second log line).
    """

    def __init__(self, key: str, message: str):
        key = _shorten(escape(str(key)), _MAX_KEY_CHARS)
        message = _shorten(escape(str(message)), _MAX_MESSAGE_CHARS)
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Listen:
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT


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
    # Cardinality controls (docs/fleet.md). `disable`: full family names not rendered
    # (collectors/__init__.py FAMILIES maps the short keys the config accepts to them).
    disable: frozenset[str] = frozenset()
    max_memcgs_per_target: int = 0  # 0: no cap; else the largest by resident bytes are exported
    keep_empty_memcgs: bool = False  # export memcgs with no pages on any LRU

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


@dataclass(frozen=True)
class Procfs:
    """The /proc source (sources/procfs.py): what it reads per target and whether it clears refs."""

    max_processes: int = 5  # per target: the largest by RSS
    top_mappings: int = 10  # per target: own series; the rest summed as mapping="other"
    # Off by default: writing clear_refs clears the accessed bits reclaim uses and takes the
    # target's mmap lock for writing; without it the source reads smaps only (docs/config.md).
    clear_refs: bool = False


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


def parse_duration(text: Any, key: str, minimum: float = MIN_DURATION) -> float:
    """'30s', '5m', '1h', '1m30s', '500ms' -> seconds (at least `minimum`)."""
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
    if total < minimum:  # 0.000001ms would age (and clear_refs) as fast as the loop can spin
        raise ConfigError(key, f"must be at least {format_duration(minimum)}, got {text!r}")
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


def _text(v: Any, key: str) -> str:
    """A non-empty string of printable characters: no NUL (the kernel's strings end there),
    no newline (lru_gen and /proc are line formats), no escape or bidi control characters."""
    v = _str(v, key)
    if not v.isprintable():
        raise ConfigError(key, f"must not contain control or invisible characters, got {v!r}")
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

def listen_address(address: Any, key: str = "listen.address") -> str:
    """An IP address mglrud can listen on: unicast, without an IPv6 %zone."""
    address = _str(address, key)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(key, f"must be an IP address like 127.0.0.1 or ::1, got {address!r}") from None
    if getattr(ip, "scope_id", None):
        raise ConfigError(key, f"must not carry a %zone (a scoped link-local address), got {address!r}; "
                               f"use a global or loopback address")
    if ip.is_multicast:
        raise ConfigError(key, f"{address} is a multicast address: mglrud listens on a unicast one")
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(key, f"{address} is the broadcast address: mglrud listens on a unicast one")
    return address


def _listen(v: Any) -> Listen:
    v = _mapping(v, "listen", ("address", "port"))
    address = listen_address(v.get("address", Listen.address))
    port = _int(v.get("port", Listen.port), "listen.port", 1, 65535)
    return Listen(address, port)


def _aging(v: Any) -> Aging:
    v = _mapping(v, "aging", ("interval", "can_swap", "force_scan", "dry_run"))
    interval = parse_duration(v["interval"], "aging.interval", MIN_INTERVAL) if "interval" in v else Aging.interval
    return Aging(
        interval=interval,
        can_swap=_bool(v.get("can_swap", Aging.can_swap), "aging.can_swap"),
        force_scan=_bool(v.get("force_scan", Aging.force_scan), "aging.force_scan"),
        dry_run=_bool(v.get("dry_run", Aging.dry_run), "aging.dry_run"),
    )


def _metrics(v: Any, aging: Aging) -> Metrics:
    v = _mapping(v, "metrics", ("cold_thresholds", "idle_age_buckets", "disable", "max_memcgs_per_target",
                                "keep_empty_memcgs"))
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
    return Metrics(thresholds, buckets,
                   disable=_disable(v.get("disable", [])),
                   max_memcgs_per_target=_int(v.get("max_memcgs_per_target", Metrics.max_memcgs_per_target),
                                              "metrics.max_memcgs_per_target", 0, 1_000_000),
                   keep_empty_memcgs=_bool(v.get("keep_empty_memcgs", Metrics.keep_empty_memcgs),
                                           "metrics.keep_empty_memcgs"))


def _disable(v: Any) -> frozenset[str]:
    """`metrics.disable`: short keys (generation, idle_age, ...) or full family names -> full names."""
    # The real family names, from the collectors (imported here, when used, as _sources does).
    from mglrud.collectors import FAMILIES

    if not isinstance(v, list):
        raise ConfigError("metrics.disable", f"must be a list of metric families like [generation, idle_age], "
                                             f"got {v!r}")
    full = set(FAMILIES.values())
    out = set()
    for i, name in enumerate(v):
        if name in FAMILIES:
            out.add(FAMILIES[name])
        elif name in full:
            out.add(name)
        elif isinstance(name, str) and name.removesuffix("_info") in full:  # info families, as exposed
            out.add(name.removesuffix("_info"))
        else:
            raise ConfigError(f"metrics.disable[{i}]", f"must be one of {', '.join(FAMILIES)} (or the full "
                                                       f"family name, see docs/metrics.md), got {name!r}")
    return frozenset(out)


def _paths(v: Any) -> Paths:
    names = tuple(f.name for f in dataclasses.fields(Paths))
    v = _mapping(v, "paths", names)
    out = {}
    for name in names:
        if name in v:
            p = _str(v[name], f"paths.{name}")
            if not p.startswith("/") or "\0" in p:
                raise ConfigError(f"paths.{name}", f"must be an absolute path, got {p!r}")
            out[name] = _text(p, f"paths.{name}")
    return Paths(**out)


def _target(v: Any, i: int, aging: Aging) -> Target:
    key = f"targets[{i}]"
    v = _mapping(v, key, ("name",) + SELECTORS + ("interval", "can_swap", "force_scan"))
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
        value = _text(raw, k)
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
    name = _text(v["name"], f"{key}.name") if "name" in v else f"{kind}:{value}"
    return Target(
        name=name,
        kind=kind,
        value=value,
        interval=(parse_duration(v["interval"], f"{key}.interval", MIN_INTERVAL)
                  if "interval" in v else aging.interval),
        can_swap=_bool(v.get("can_swap", aging.can_swap), f"{key}.can_swap"),
        force_scan=_bool(v.get("force_scan", aging.force_scan), f"{key}.force_scan"),
        pattern=pattern,
    )


def _targets(v: Any, aging: Aging) -> tuple[Target, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError("targets", "must be a non-empty list; leave the key out to age every memcg")
    if len(v) > MAX_TARGETS:
        raise ConfigError("targets", f"at most {MAX_TARGETS} targets, got {len(v)} (each one adds series; "
                                     f"a memcg glob or a cmdline regex covers many)")
    out = [_target(t, i, aging) for i, t in enumerate(v)]
    first: dict[str, int] = {}
    for i, t in enumerate(out):
        j = first.setdefault(t.name, i)
        if j != i:
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


_SIZE = re.compile(r"(\d{1,15})([KMG]i?B?|)")
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
    if program:
        _text(program, "bpf.program")
    return Bpf(
        region_size=size,
        half_life=(parse_duration(v["half_life"], "bpf.half_life", MIN_INTERVAL)
                   if "half_life" in v else Bpf.half_life),
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
        snapshot_interval=(parse_duration(snap["interval"], "snapshot.interval", MIN_INTERVAL)
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


# libyaml's parser when PyYAML has it (Debian's does): 4x faster than the pure-Python one, and
# its composer recurses in C, so nesting is bounded by the event pass below before it runs.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):
    """SafeLoader that refuses duplicate and unhashable keys instead of keeping the last one or
    raising TypeError, and that never converts an integer longer than MAX_INT_DIGITS."""


class _Huge:
    """An integer too long to convert (Python refuses beyond 4300 digits, and no key wants one):
    validation refuses it like any value of the wrong type, and messages show only its length."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"

    __str__ = __repr__


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.MarkedYAMLError(problem="a list or mapping cannot be a key here",
                                       problem_mark=k.start_mark) from None
        if key in seen:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode):
    value = loader.construct_scalar(node)
    if len(value) > MAX_INT_DIGITS:
        body = value.replace("_", "").lstrip("+-")
        prefix = 2 if body[:2].lower() in ("0x", "0o", "0b") else 0
        return _Huge(sum(c.isalnum() for c in body[prefix:]))
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


class _TooBig(Exception):
    pass


def _check_events(text: str) -> bool:
    """Walk the parser's events (libyaml's parser keeps a stack, it does not recurse) and
    refuse nesting deeper than MAX_DEPTH before anything recursive sees the document.
    Returns whether the document uses aliases."""
    depth, aliases = 0, False
    loader = _BaseLoader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _TooBig(f"nested deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}, "
                                  f"column {event.start_mark.column + 1}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases = True
    finally:
        loader.dispose()
    return aliases


def _check_graph(root: yaml.Node, aliases: bool) -> None:
    """Size and depth of the document with every alias expanded, counted over the node graph
    with each shared node counted once per use (memoised, not expanded): a billion-laughs
    document is refused here, in time proportional to its text. Iterative, so no
    RecursionError; an alias to an enclosing node (a cycle) is refused too."""
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [x for pair in node.value for x in pair]
        return ()

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            open_.discard(nid)
            kids = children(node)
            size[nid] = 1 + sum(size[id(c)] for c in kids)
            depth[nid] = 1 + max((depth[id(c)] for c in kids), default=0)
            if size[nid] > MAX_VALUES:
                raise _TooBig(f"YAML aliases expand to more than {MAX_VALUES} values (an alias bomb?)" if aliases
                              else f"holds more than {MAX_VALUES} values: not a config file?")
            if depth[nid] > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded")
            continue
        if nid in size:
            continue
        if nid in open_:
            raise _TooBig(f"an alias at line {node.start_mark.line + 1} refers to itself (a recursive document)")
        open_.add(nid)
        stack.append((node, True))
        for c in children(node):
            if id(c) in open_:
                raise _TooBig(f"an alias at line {node.start_mark.line + 1} refers to itself (a recursive document)")
            if id(c) not in size:
                stack.append((c, False))


def _parse(text: str) -> Any:
    """YAML text -> Python values, in bounded time and memory (see the MAX_* bounds)."""
    aliases = _check_events(text)
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, aliases)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def loads(text: str, source: str = "(string)") -> Config:
    """Parse and validate a config text. An empty document is refused: a file caught while it is
    being written must not turn into the built-in defaults (which age every memcg)."""
    try:
        doc = _parse(text)
    except _TooBig as e:
        raise ConfigError(source, str(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, f"is not valid YAML: {where}{e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, f"is not valid YAML: {e}") from None
    except (ValueError, IndexError, KeyError, AttributeError, TypeError, OverflowError) as e:
        # PyYAML's constructors of explicitly tagged scalars raise these for bad text
        # (`!!int ''`, `!!bool x`, `!!timestamp x`): found by tests/unit/test_config_fuzz.py.
        raise ConfigError(source, f"is not valid YAML: a tagged value cannot be read "
                                  f"({type(e).__name__}: {e})") from None
    if doc is None:
        raise ConfigError(source, "is empty (being written?); leave out --config for the built-in defaults, "
                                  "or write {}")
    return from_dict(doc, source)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def read_config_file(path: str) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. Opened non-blocking, so a FIFO
    is refused at once rather than waited on; /dev/zero is refused before a byte is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(path, "cannot read: Is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "an unknown kind of file")
            raise ConfigError(path, f"is not a regular file ({kind})")
        limit = f"is larger than {MAX_CONFIG_BYTES >> 10} KiB"
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"{limit} ({st.st_size} bytes): not a config file?")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:  # the file may grow while it is read
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"{limit}: not a config file?")
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None
    if text.strip() and not text.endswith("\n"):
        raise ConfigError(path, "does not end with a newline: truncated, or still being written?")
    return text


def load(path: str | None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return from_dict(None)
    cfg = loads(read_config_file(path), path)
    if cfg.bpf.program:
        from mglrud.filetrust import untrusted

        problem = untrusted(cfg.bpf.program)
        if problem:
            raise ConfigError("bpf.program", problem)
    return cfg
