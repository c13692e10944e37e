"""The BPF source's kernel side: bpf/hotness.bpf.c compiled and attached, its maps read with bpf(2).

The program is compiled and attached by a short-lived child (mglrud/bpf_loader.py:
bcc and LLVM would stay resident in the daemon) to mglrud's tracepoint (the range
event when the kernel has it), or, on a kernel without mglrud's patch, to the
accessed-bit probe (sources/bpf_probe.py, docs/stock-kernel.md); the daemon keeps
the maps' and the attachment's descriptors and reads the maps with bpf(2)
(mglrud/bpfsys.py). sources/bpf_hotness.py turns what it reads into heat.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from itertools import repeat
from pathlib import Path

from mglrud import bpf_loader, bpfsys, btf
from mglrud.config import Bpf
from mglrud.fs import FS
from mglrud.model import hotness as H
from mglrud.programs import bpf_program
from mglrud.sources import bpf_probe

log = logging.getLogger(__name__)

# The per-entry event: the debugging patch at the end of kernel-patch/'s series (one event
# per young entry; a program on it multiplies the time of an aging pass): benchmarks only.
EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young")
# One event per PTE table / THP / look-around window with the counts of entries scanned and
# found young (the series' main patch): what the program attaches to.
RANGE_EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young_range")
DEFAULT_PROGRAM = bpf_program("hotness.bpf.c")  # package data in a wheel, bpf/ in a checkout
MAX_TGIDS = 4096
MAX_MEMCGS = 4096
# What reading or updating the maps raises when the kernel side is gone or broken: bpf(2)
# errors (bpfsys.BpfError is an OSError) and a value of the wrong size. Anything else is a
# bug in mglrud and goes to the daemon loop's traceback, not into a silent "down".
MAP_ERRORS = (OSError, struct.error)


class Unavailable(Exception):
    """The BPF source cannot run here; the message says why and what to do."""


def program_path(cfg: Bpf) -> Path:
    return Path(cfg.program) if cfg.program else DEFAULT_PROGRAM


def cflags(cfg: Bpf, range_event: bool = False) -> list[str]:
    return [f"-DREGION_SHIFT={cfg.region_shift}", f"-DMAX_REGIONS={cfg.max_regions}",
            f"-DMAX_TGIDS={MAX_TGIDS}", f"-DMAX_MEMCGS={MAX_MEMCGS}"] + (["-DUSE_RANGE_EVENT"] if range_event else [])


# The probe's -D constants (bpf/hotness.bpf.c, MGLRUD_BTF): (macro, struct, member)
PROBE_MEMBERS = (("VMA_VM_MM", "vm_area_struct", "vm_mm"), ("MM_OWNER", "mm_struct", "owner"),
                 ("TASK_TGID", "task_struct", "tgid"), ("TASK_CGROUPS", "task_struct", "cgroups"),
                 ("CSS_SET_SUBSYS", "css_set", "subsys"), ("PAGE_FLAGS", "page", "flags"),
                 ("PAGE_COMPOUND_HEAD", "page", "compound_head"))


def probe_layout(data: bytes) -> list[str]:
    """The probe's struct members, sizes and enumerators from the kernel's BTF bytes, as -D
    flags with -DMGLRUD_BTF (bpf/hotness.bpf.c then includes none of linux/mm_types.h,
    linux/memcontrol.h, linux/page-flags.h). Raises btf.BtfError when one is missing."""
    out = [f"-D{macro}={btf.member_offset(data, st, member)}" for macro, st, member in PROBE_MEMBERS]
    memcg_id = btf.member_offset(data, "mem_cgroup", "id") + btf.member_offset(data, "mem_cgroup_id", "id")
    return out + [f"-DMEMCG_ID_ID={memcg_id}", f"-DPAGE_SIZEOF={btf.struct_size(data, 'page')}",
                  f"-DMEMORY_CGRP_ID={btf.enum_value(data, 'memory_cgrp_id')}",
                  f"-DPG_SWAPBACKED={btf.enum_value(data, 'PG_swapbacked')}", "-DMGLRUD_BTF=1"]


def layout(fs: FS, probe: bool) -> list[str]:
    """-D flags with what the program reads of kernel structs, from the kernel's BTF
    (mglrud/btf.py), so that bcc need not parse the headers that define them: linux/sched.h
    is two thirds of the tracepoint program's compile, linux/mm_types.h and
    linux/memcontrol.h most of the probe's. Without BTF, or with a member missing from it,
    fewer or no flags: the program includes the headers instead."""
    path = fs.sys("kernel", "btf", "vmlinux")
    try:
        data = path.read_bytes()
        out = [f"-DTASK_FLAGS_OFFSET={btf.member_offset(data, 'task_struct', 'flags')}"]
    except (OSError, btf.BtfError) as e:
        log.info("source bpf: task_struct.flags not found in %s (%s): compiling with linux/sched.h", path, e)
        return []
    if not probe:
        # the tracepoints carry the mm: the program reads mm->owner->tgid itself
        try:
            out += [f"-DMM_OWNER={btf.member_offset(data, 'mm_struct', 'owner')}",
                    f"-DTASK_TGID={btf.member_offset(data, 'task_struct', 'tgid')}"]
        except btf.BtfError as e:
            log.info("source bpf: %s in %s: compiling the tracepoint program with linux/mm_types.h", e, path)
    if probe:
        try:
            out += probe_layout(data)
        except btf.BtfError as e:
            log.info("source bpf: %s in %s: compiling the probe with the mm headers", e, path)
    return out


def pick_event(cfg: Bpf, fs: FS) -> str | None:
    """The tracepoint to attach to: the range event when the kernel has it and regions
    are at least a PTE table (2 MiB), else the per-entry (debugging) event; None if
    neither exists."""
    try:
        if fs.tracefs(*RANGE_EVENT).is_dir() and cfg.region_shift >= 21:
            return RANGE_EVENT[-1]
        return EVENT[-1] if fs.tracefs(*EVENT).is_dir() else None
    except PermissionError:  # tracefs is 0700 root
        raise Unavailable(f"{fs.tracefs(*EVENT)} is not readable: run mglrud as root") from None


# bpf/hotness.bpf.c's struct region_key and struct region_val, as the bpf(2) syscall returns them
KEY = struct.Struct("<QIHBB")  # region, tgid, memcg_id, node, lru
VAL = struct.Struct("<QQQ")  # pages, events, last_ns
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
# struct region_key for numpy (KEY's layout, 16 bytes)
KEY_DTYPE = [("region", "<u8"), ("tgid", "<u4"), ("memcg_id", "<u2"), ("node", "u1"), ("lru", "u1")]
MAPS = ["heat", "stats", "target_tgids", "target_memcgs", "config"]
# indexes of the config map (bpf/hotness.bpf.c CONFIG_*)
CONFIG_SELF_TGID, CONFIG_TARGETS_GEN = 0, 1
STATS = ("events", "matched", "dropped")
# stats[3..5]: base pages of targets found young, by who cleared the bit (bpf/hotness.bpf.c)
HARVESTERS = ("aging", "reclaim", "other")


def read_columns(batches, ncpus: int, slot: int):
    """The heat map's (keys, values, count) chunks (bpfsys.Map.batches()) -> heat_columns.Cells,
    the CPUs' values combined as H.combine_percpu() does (pages and events summed, last_ns the
    largest), at C speed: no Python object per cell."""
    import numpy as np  # imported on first read: only the BPF source needs it
    from mglrud.model import heat_columns as C

    cols: list[list] = [[], [], [], [], []]
    pages, last = [], []
    for keys, values, n in batches:
        k = np.frombuffer(keys, dtype=KEY_DTYPE, count=n)
        for col, name in zip(cols, ("tgid", "memcg_id", "region", "node", "lru")):
            col.append(k[name].astype(np.uint64))
        # one row per (cell, CPU); reduceat over each cell's ncpus rows (4x faster than sum(axis=1)
        # over the small middle axis). Only pages and last_ns are kept: events is not used.
        a = np.frombuffer(values, dtype="<u8", count=n * ncpus * slot // 8).reshape(n * ncpus, slot // 8)
        starts = np.arange(0, n * ncpus, ncpus)
        pages.append(np.add.reduceat(a[:, 0], starts).astype(np.int64))
        last.append(np.maximum.reduceat(a[:, 2], starts).astype(np.int64))
    if not pages:
        return C.empty_cells()
    tgid, memcg_id, region, node, lru = (np.concatenate(c) for c in cols)
    if len(lru) and int(lru.max()) >= len(H.LRU_NAMES):
        raise IndexError(f"lru {int(lru.max())} in the heat map: the model knows {len(H.LRU_NAMES)} lrus")
    return C.dedup(C.Cells(tgid, memcg_id, region, node, lru, np.concatenate(pages), np.concatenate(last)))


def read_cells(batches, ncpus: int, slot: int) -> dict:
    """The heat map's (keys, values, count) chunks (bpfsys.Map.batches()) -> {CellKey: Counts},
    the CPUs' values combined as H.combine_percpu() does. Keys and values are decoded by numpy,
    chunk by chunk, and the per-CPU copies summed there: the only Python objects made are one
    CellKey and one Counts per cell, built by tuple.__new__ from numpy's lists (C speed)."""
    import numpy as np  # imported on first read: only the BPF source needs it

    cols: list[list] = [[], [], [], [], []]
    vals = []
    for keys, values, n in batches:
        k = np.frombuffer(keys, dtype=KEY_DTYPE, count=n)
        for col, name in zip(cols, ("tgid", "memcg_id", "region", "node", "lru")):
            col.append(k[name])
        # one row per (cell, CPU); reduceat over each cell's ncpus rows (4x faster than sum(axis=1)
        # over the small middle axis)
        a = np.frombuffer(values, dtype="<u8", count=n * ncpus * slot // 8).reshape(n * ncpus, slot // 8)
        starts = np.arange(0, n * ncpus, ncpus)
        out = np.empty((n, 3), dtype=np.uint64)
        out[:, 0:2] = np.add.reduceat(a[:, 0:2], starts, axis=0)
        out[:, 2] = np.maximum.reduceat(a[:, 2], starts)
        vals.append(out)
    if not vals:
        return {}
    tgid, memcg_id, region, node, lru = (np.concatenate(c) for c in cols)
    lrus = np.array(H.LRU_NAMES, dtype=object)[lru].tolist()  # IndexError on an lru the model does not know
    keys = map(tuple.__new__, repeat(H.CellKey), zip(tgid.tolist(), memcg_id.tolist(), region.tolist(),
                                                     node.tolist(), lrus))
    v = np.concatenate(vals)
    # one list per column, zipped: no list per cell on the way to its Counts
    counts = map(tuple.__new__, repeat(H.Counts), zip(v[:, 0].tolist(), v[:, 1].tolist(), v[:, 2].tolist()))
    return dict(zip(keys, counts))


class Program:
    """bpf/hotness.bpf.c compiled by bcc and attached to the tracepoint, in a short-lived
    child (mglrud/bpf_loader.py: bcc and LLVM would stay resident in the daemon); the
    daemon keeps the maps' and the attachment's descriptors and reads the maps with
    bpf(2) (mglrud/bpfsys.py). Tests of the source give it a stand-in."""

    _targets_gen = 0  # config[CONFIG_TARGETS_GEN], bumped by each set_targets()

    def __init__(self, cfg: Bpf, fs: FS, event: str | None = None):
        # `event` forces one of the two tracepoints (benchmarks compare them)
        self.event = event or pick_event(cfg, fs)
        attach, flags = "tracepoint", cflags(cfg, self.event == RANGE_EVENT[-1])
        if self.event is None or self.event in bpf_probe.MODES:
            # no tracepoint: the accessed-bit probe of a stock kernel (docs/stock-kernel.md)
            check = bpf_probe.probe(fs)
            if not check.usable:
                if self.event is None and fs.tracefs(*RANGE_EVENT).is_dir():
                    # the series' main patch without its debugging one: the range event only
                    raise Unavailable(f"{fs.tracefs(*RANGE_EVENT)} needs bpf.region_size of 2 MiB or more "
                                      f"(it is {1 << cfg.region_shift} B) and this kernel has no per-entry "
                                      f"event, and {check.detail}")
                raise Unavailable(f"{fs.tracefs(*EVENT)} missing (the kernel lacks mglrud's tracepoint, "
                                  f"kernel-patch/, or tracefs is not mounted), and {check.detail}")
            attach = self.event or check.mode
            flags = cflags(cfg) + [f"-DVMEMMAP_BASE={check.vmemmap_base:#x}ULL"]
        flags += layout(fs, attach != "tracepoint")
        path = program_path(cfg)
        if not path.is_file():
            raise Unavailable(f"BPF program {path} not found (bpf.program)")
        started = time.monotonic()
        answer: dict = {}
        try:
            fds, self._held, self.child_seconds = bpf_loader.load(
                path, flags, self.event or attach, MAPS, attach=attach, answer_out=answer)
        except bpf_loader.LoadError as e:
            raise Unavailable(str(e)) from None
        if attach != "tracepoint":
            # the event label of mglrud_bpf_attached: how the program is attached
            self.event = answer.get("mode", attach)
            self.fallback = answer.get("fallback", "")
            if self.fallback:
                log.warning("source bpf: fexit unavailable, attached as kprobe+kretprobe: %s", self.fallback)
        self.maps: dict[str, bpfsys.Map] = {}
        try:
            for name in MAPS:
                fd = fds.pop(name)
                try:
                    self.maps[name] = bpfsys.Map(fd)
                except OSError:
                    os.close(fd)
                    raise
            heat = self.maps["heat"]
            if (heat.key_size, heat.value_size) != (KEY.size, VAL.size):
                raise Unavailable(f"{path}: map heat has {heat.key_size}-byte keys and {heat.value_size}-byte "
                                  f"values, mglrud reads {KEY.size} and {VAL.size} (mglrud/sources/bpf_hotness.py)")
        except (OSError, Unavailable) as e:
            for fd in fds.values():
                os.close(fd)
            self.close()
            raise e if isinstance(e, Unavailable) else Unavailable(f"cannot read the BPF maps: {e}") from None
        self.compile_seconds = time.monotonic() - started
        self.capacity = cfg.max_regions

    def set_targets(self, tgids: set[int], memcg_ids: set[int]) -> None:
        # this process writes lru_gen: the harvests it causes are the aging's (the program's harvester())
        self.maps["config"].update(U32.pack(CONFIG_SELF_TGID), U32.pack(os.getpid()))
        for name, want in (("target_tgids", tgids), ("target_memcgs", memcg_ids)):
            table = self.maps[name]
            have = {U32.unpack(k)[0] for k in table.keys()}
            for k in have - want:
                table.delete(U32.pack(k))
            for k in sorted(want - have):
                table.update(U32.pack(k), b"\x01")
        # a new generation, every call (once a cycle): the probe's per-CPU mm cache (owner's tgid
        # and memcg, targeted or not) is dropped, so new targets and a task moved to another
        # memcg are seen from this cycle's aging on (bpf/hotness.bpf.c, mm_cache)
        self._targets_gen = (self._targets_gen + 1) & 0xFFFFFFFF
        self.maps["config"].update(U32.pack(CONFIG_TARGETS_GEN), U32.pack(self._targets_gen))

    def _percpu_stat(self, i: int) -> list[int]:
        stats = self.maps["stats"]
        zero = bytes(stats.slot * stats.ncpus)  # an array has every key; never absent in practice
        return [U64.unpack(c)[0] for c in stats.percpu_values(stats.lookup(U32.pack(i)) or zero)]

    def dump(self) -> dict:
        """The maps as plain data (the form tests/fixtures/bpf/ holds). A cell's "percpu" holds
        one entry, the CPUs' values already combined (read_cells())."""
        heat = self.maps["heat"]
        cells = [{"tgid": k.tgid, "memcg_id": k.memcg_id, "region": k.region, "node": k.node,
                  "lru": H.LRU_NAMES.index(k.lru), "percpu": [list(c)]}
                 for k, c in read_cells(heat.batches(), heat.ncpus, heat.slot).items()]
        out = {"stats": {n: self._percpu_stat(i) for i, n in enumerate(STATS)},
               "heat": cells,
               "harvest": {n: self._percpu_stat(len(STATS) + i) for i, n in enumerate(HARVESTERS)}}
        out["mono_ns"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return out

    def read(self) -> H.RawRead:
        """The maps as the model reads them (what H.raw_from_dump(self.dump()) gives), decoded
        at C speed: 65k cells of 64 CPUs' values in tens of ms (read_cells)."""
        heat = self.maps["heat"]
        cells = read_cells(heat.batches(), heat.ncpus, heat.slot)
        events, matched, dropped = (sum(self._percpu_stat(i)) for i in range(len(STATS)))
        harvest = {n: sum(self._percpu_stat(len(STATS) + i)) for i, n in enumerate(HARVESTERS)}
        return H.RawRead(time.clock_gettime_ns(time.CLOCK_MONOTONIC), cells, events, matched, dropped, harvest)

    def read_columns(self):
        """read() with the cells as columns (heat_columns.Cells): what the source reads."""
        heat = self.maps["heat"]
        cells = read_columns(heat.batches(), heat.ncpus, heat.slot)
        events, matched, dropped = (sum(self._percpu_stat(i)) for i in range(len(STATS)))
        harvest = {n: sum(self._percpu_stat(len(STATS) + i)) for i, n in enumerate(HARVESTERS)}
        return H.RawRead(time.clock_gettime_ns(time.CLOCK_MONOTONIC), cells, events, matched, dropped, harvest)

    def delete(self, keys) -> None:
        heat = self.maps["heat"]
        for c in keys:
            heat.delete(KEY.pack(c.region, c.tgid, c.memcg_id, c.node, H.LRU_NAMES.index(c.lru)))

    def close(self) -> None:
        """Closing the perf event's descriptor detaches the program; the maps go with the last descriptor."""
        for m in self.maps.values():
            m.close()
        self.maps = {}
        for fd in self._held:
            try:
                os.close(fd)
            except OSError:
                pass
        self._held = []
