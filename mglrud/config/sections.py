"""Config sections -> validated objects: from_dict(), loads(), load()."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any

import yaml

from mglrud import boundedyaml
from mglrud.config.schema import (Aging, Bpf, Config, DEFAULT_TARGETS, Listen, LOG_LEVELS, MAX_NR_GENS, MAX_TARGETS,
                                  LruGen, Metrics, MIN_INTERVAL, Paths, Procfs, SELECTORS, Target, UNIT_SUFFIXES)
from mglrud.config.values import (_bool, ConfigError, _durations, format_duration, _int, _mapping, memcg_glob,
                                  parse_duration, _str, _text)


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
    v = _mapping(v, "listen", ("address", "port", "socket"))
    address = listen_address(v.get("address", Listen.address))
    port = _int(v.get("port", Listen.port), "listen.port", 1, 65535)
    sock = v.get("socket", Listen.socket)
    if not isinstance(sock, str) or sock and (not sock.startswith("/") or "\0" in sock or len(sock.encode()) > 107):
        raise ConfigError("listen.socket", f"must be an absolute path of at most 107 bytes (a unix socket), "
                                           f"or empty for none, got {sock!r}")
    if sock:
        _text(sock, "listen.socket")
    return Listen(address, port, sock)


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
    uid, cgroup, cgroup_pattern = _requirements(v, key, kind)
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
    cgroup = _text(v["cgroup"], f"{key}.cgroup")
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


RESIDENCY_MAX_AGE_MAX = 3600.0  # seconds


def _residency_max_age(v: Any) -> float:
    """bpf.residency_max_age: 0 (read in full every cycle) or a duration of 1s to 1h."""
    key = "bpf.residency_max_age"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v == 0:
            return 0.0
        raise ConfigError(key, f"must be 0 or a duration with a unit like 30s, 1m (at most 1h), got {v!r}")
    if v in ("0", "0s"):
        return 0.0
    seconds = parse_duration(v, key, MIN_INTERVAL)
    if seconds > RESIDENCY_MAX_AGE_MAX:
        raise ConfigError(key, f"must be at most 1h, got {v!r}")
    return seconds


def _bpf(v: Any) -> Bpf:
    v = _mapping(v, "bpf", ("region_size", "half_life", "heat_buckets", "max_regions", "max_processes",
                            "residency_max_age", "program"))
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
        residency_max_age=(_residency_max_age(v["residency_max_age"]) if "residency_max_age" in v
                           else Bpf.residency_max_age),
        program=program,
    )


TOP_KEYS = ("listen", "aging", "snapshot", "metrics", "targets", "paths", "log", "sources", "procfs", "bpf",
            "lru_gen", "web_config_file")


def _lru_gen(v: Any) -> LruGen:
    v = _mapping(v, "lru_gen", ("enable",))
    return LruGen(enable=_bool(v.get("enable", LruGen.enable), "lru_gen.enable"))


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
        lru_gen=_lru_gen(doc.get("lru_gen")),
        web_config_file=_web_config_file(doc.get("web_config_file")),
    )


def loads(text: str, source: str = "(string)") -> Config:
    """Parse and validate a config text. An empty document is refused: a file caught while it is
    being written must not turn into the built-in defaults (which age every memcg)."""
    try:
        doc = boundedyaml.parse(text)
    except boundedyaml.TooBig as e:
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


def load(path: str | None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return from_dict(None)
    try:
        text = boundedyaml.read_text(path)
    except boundedyaml.Refused as e:
        raise ConfigError(path, str(e)) from None
    cfg = loads(text, path)
    if cfg.bpf.program:
        from mglrud.filetrust import untrusted

        problem = untrusted(cfg.bpf.program)
        if problem:
            raise ConfigError("bpf.program", problem)
    return cfg
