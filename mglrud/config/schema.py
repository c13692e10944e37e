"""The config's shape: frozen dataclasses, their defaults, and the bounds validation keeps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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
MAX_TARGETS = 1000  # each target is series per memcg or process: far beyond any host's need
MIN_INTERVAL = 1.0  # seconds, for aging, snapshot and target intervals and the BPF half-life
MIN_DURATION = 0.001  # seconds, any other duration: the finest unit a duration takes
_MAX_KEY_CHARS, _MAX_MESSAGE_CHARS = 256, 320  # a path can be the key


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
    # Off by default: writing clear_refs clears the accessed bits reclaim uses and takes the
    # target's mmap lock for writing; without it the source reads smaps only (docs/config.md).
    clear_refs: bool = False


@dataclass(frozen=True)
class LruGen:
    """What mglrud may do to /sys/kernel/mm/lru_gen/enabled (docs/stock-kernel.md)."""

    # Off by default: a kernel built with CONFIG_LRU_GEN=y but MGLRU off at run time (Debian 12's)
    # stays off unless the config asks, since switching it on changes how the whole machine reclaims.
    enable: bool = False


@dataclass(frozen=True)
class Bpf:
    """The BPF hotness source (sources/bpf_hotness.py, bpf/hotness.bpf.c)."""

    region_size: int = 2 << 20  # bytes; a power of two
    half_life: float = 300.0  # seconds, of the access-frequency EWMA
    heat_buckets: int = 64  # buckets of the address-offset histogram per process target
    max_regions: int = 65536  # entries of the in-kernel map (tgid, memcg, region, node, lru)
    max_processes: int = 10  # per target: processes whose residency (pagemap) is read
    # seconds: a process's smaps is read again at least this often, and all of its pagemap over the
    # next cycles; in between pagemap only where its RSS counters moved (sources/bpf_heat.py
    # ResidencyCache). 0: smaps and pagemap in full every cycle
    residency_max_age: float = 120.0
    program: str = ""  # the .bpf.c file; empty: the packaged one (mglrud/programs.py)

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
    lru_gen: LruGen = LruGen()
    web_config_file: str = ""  # exporter-toolkit web config (mglrud/webconfig.py); empty: plain HTTP


DEFAULT_TARGETS = [{"name": "all", "memcg": "/**"}]
