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
from pathlib import Path

from mglrud import bpf_loader, bpfsys
from mglrud.config import Bpf
from mglrud.fs import FS
from mglrud.model import hotness as H
from mglrud.programs import bpf_program
from mglrud.sources import bpf_probe

log = logging.getLogger(__name__)

EVENT = ("events", "vmscan", "mm_vmscan_lru_gen_young")
# One event per PTE table / THP / look-around window with the count of young entries
# (patch 3 of kernel-patch/): what the program attaches to when the kernel has it, because
# a program on the per-entry event multiplies the time of an aging pass.
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


def pick_event(cfg: Bpf, fs: FS) -> str | None:
    """The tracepoint to attach to: the range event when the kernel has it and regions
    are at least a PTE table (2 MiB), else the per-entry event; None if neither exists."""
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
MAPS = ["heat", "stats", "target_tgids", "target_memcgs", "config"]
STATS = ("events", "matched", "dropped")
# stats[3..5]: base pages of targets found young, by who cleared the bit (bpf/hotness.bpf.c)
HARVESTERS = ("aging", "reclaim", "other")


def combine_percpu_raw(values: list[bytes], ncpus: int, slot: int) -> list[list[int]]:
    """Raw per-CPU values of the heat map (each `ncpus` slots of `slot` bytes, a struct
    region_val at the start of each) -> per key [pages, events, last_ns]: pages and events
    summed over CPUs, last_ns the latest; what H.combine_percpu() gives, at C speed (numpy
    over one buffer), with no Python object per CPU."""
    if not values:
        return []
    import numpy as np  # imported on first read: only the BPF source needs it

    a = np.frombuffer(b"".join(values), dtype="<u8").reshape(len(values), ncpus, slot // 8)
    out = np.empty((len(values), 3), dtype=np.uint64)
    a[:, :, 0:2].sum(axis=1, out=out[:, 0:2])
    a[:, :, 2].max(axis=1, out=out[:, 2])
    return out.tolist()


class Program:
    """bpf/hotness.bpf.c compiled by bcc and attached to the tracepoint, in a short-lived
    child (mglrud/bpf_loader.py: bcc and LLVM would stay resident in the daemon); the
    daemon keeps the maps' and the attachment's descriptors and reads the maps with
    bpf(2) (mglrud/bpfsys.py). Tests of the source give it a stand-in."""

    def __init__(self, cfg: Bpf, fs: FS, event: str | None = None):
        # `event` forces one of the two tracepoints (benchmarks compare them)
        self.event = event or pick_event(cfg, fs)
        attach, flags = "tracepoint", cflags(cfg, self.event == RANGE_EVENT[-1])
        if self.event is None or self.event in bpf_probe.MODES:
            # no tracepoint: the accessed-bit probe of a stock kernel (docs/stock-kernel.md)
            check = bpf_probe.probe(fs)
            if not check.usable:
                raise Unavailable(f"{fs.tracefs(*EVENT)} missing (the kernel lacks mglrud's tracepoint, "
                                  f"kernel-patch/, or tracefs is not mounted), and {check.detail}")
            attach = self.event or check.mode
            flags = cflags(cfg) + [f"-DVMEMMAP_BASE={check.vmemmap_base:#x}ULL"]
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
        self.maps["config"].update(U32.pack(0), U32.pack(os.getpid()))
        for name, want in (("target_tgids", tgids), ("target_memcgs", memcg_ids)):
            table = self.maps[name]
            have = {U32.unpack(k)[0] for k in table.keys()}
            for k in have - want:
                table.delete(U32.pack(k))
            for k in sorted(want - have):
                table.update(U32.pack(k), b"\x01")

    def dump(self) -> dict:
        """The maps as plain data (the form tests/fixtures/bpf/ holds). A cell's "percpu" holds
        one entry, the CPUs' values already combined (combine_percpu()): summing 64 CPUs' copies
        of 65k cells one Python list at a time took seconds."""
        heat = self.maps["heat"]
        cells = []
        items = heat.items()
        for (k, _), v in zip(items, combine_percpu_raw([v for _, v in items], heat.ncpus, heat.slot)):
            region, tgid, memcg_id, node, lru = KEY.unpack(k)
            cells.append({"tgid": tgid, "memcg_id": memcg_id, "region": region, "node": node, "lru": lru,
                          "percpu": [v]})
        stats = self.maps["stats"]
        zero = bytes(stats.slot * stats.ncpus)  # an array has every key; never absent in practice
        out = {"stats": {n: [U64.unpack(c)[0] for c in stats.percpu_values(stats.lookup(U32.pack(i)) or zero)]
                         for i, n in enumerate(STATS)},
               "heat": cells,
               "harvest": {n: [U64.unpack(c)[0] for c in stats.percpu_values(stats.lookup(U32.pack(len(STATS) + i))
                                                                               or zero)]
                           for i, n in enumerate(HARVESTERS)}}
        out["mono_ns"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return out

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
