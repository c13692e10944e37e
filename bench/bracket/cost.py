"""The bracket prototype's cost: aging-pass time with it attached / without. Stock guest only.

  make -C bench/bracket
  kernel-patch/vm-run.sh --variant stock --out DIR --exec '/usr/bin/python3 bench/bracket/cost.py --out DIR'

Same method as bench/bpf_hotness.py's overhead table (its Mapping and age()): the process moves
into a memcg of its own, maps --size bytes of anonymous 4 KiB pages, and before each aging pass
(debugfs lru_gen, force_scan) touches every page after a TLB flush, so every PTE is young; the
pass is timed, in blocks of --per-block passes per configuration, --blocks blocks interleaved:
  off          nothing attached
  empty        an fexit on ptep_test_and_clear_young that does nothing (the per-entry trampoline)
  count        fentry+fexit on walk_pud_range: young-before / old-after per PTE table, counted
  attrib       count + per harvest: tgid (mm->owner), node (pfn ranges), anon/file (struct page), region
  attrib-nopage  attrib without the struct page read (anon/file left to user space)
Ratios of medians; harvested pages per pass from the program's own counters (should be the
mapping's pages plus the bench process's own). Results to DIR/bracket_cost.txt.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "vm"))

import lrugen  # noqa: E402
from bpf_hotness import CG, PAGE, Mapping, age, size  # noqa: E402
from libbpf_ctypes import Object  # noqa: E402

S_WALKS, S_TABLES, S_YOUNG, S_HARVESTED, S_LOST, S_MATCHED = range(6)
MAX_NODES = 4


class NodeRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("node", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class HKey(ctypes.Structure):
    _fields_ = [("region", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("node", ctypes.c_uint16),
                ("lru", ctypes.c_uint16)]


def node_ranges(zoneinfo: str) -> list[tuple[int, int, int]]:
    """(start_pfn, end_pfn, node) per node from /proc/zoneinfo's 'Node N, zone Z', 'spanned' and
    'start_pfn:' lines (mm/vmstat.c zoneinfo_show_print); empty zones left out."""
    spans: dict[int, list[int]] = {}
    node = spanned = None
    for line in zoneinfo.splitlines():
        w = line.split()
        if line.startswith("Node "):
            node, spanned = int(w[1].rstrip(",")), None
        elif w[:1] == ["spanned"]:
            spanned = int(w[1])
        elif w[:1] == ["start_pfn:"] and node is not None and spanned:
            s = int(w[1])
            lo, hi = spans.get(node, [s, s + spanned])
            spans[node] = [min(lo, s), max(hi, s + spanned)]
    # by start pfn: the per-table mode (ATTRIB=2) splits a table's pages at the next range's start
    return sorted((lo, hi, n) for n, (lo, hi) in spans.items())


class Bracket:
    def __init__(self, path: Path):
        self.o = Object(str(path))
        self.stats = self.o.map_fd("stats")
        nodes = self.o.map_fd("nodes")
        ranges = node_ranges(Path("/proc/zoneinfo").read_text())[:MAX_NODES]
        self.o.update(nodes, ctypes.c_uint32(0), NodeRange(0, 0, len(ranges)))
        for k, (lo, hi, n) in enumerate(ranges):
            self.o.update(nodes, ctypes.c_uint32(k + 1), NodeRange(lo, hi, n))
        self.ranges = ranges

    def stat(self, i: int) -> int:
        v = ctypes.c_uint64()
        self.o.lookup(self.stats, ctypes.c_uint32(i), v)
        return v.value

    def heat(self) -> dict[tuple[int, int, int, int], int]:
        fd, out = self.o.map_fd("heat"), {}
        for k in self.o.keys(fd, HKey):
            v = ctypes.c_uint64()
            if self.o.lookup(fd, k, v):
                out[(k.tgid, k.region, k.node, k.lru)] = v.value
        return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp"))
    p.add_argument("--size", type=size, default=256 << 20)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--per-block", type=int, default=4)
    p.add_argument("--every", type=int, default=1, help="one page in N touched before each pass")
    p.add_argument("--configs", default="empty,count,attrib,attrib-nopage")
    args = p.parse_args()
    enabled = Path("/sys/kernel/mm/lru_gen/enabled")
    if int(enabled.read_text(), 16) == 0:
        enabled.write_text("y")  # a test guest only
    CG.mkdir(exist_ok=True)
    (CG / "cgroup.subtree_control").write_text("+memory")
    (CG / "a").mkdir(exist_ok=True)
    (CG / "a" / "cgroup.procs").write_text(str(os.getpid()))
    mid = lrugen.memcg_id("/mglrud-bench/a")
    configs = [c for c in args.configs.split(",") if c]

    t = time.monotonic()
    objs = {name: Bracket(HERE / "build" / f"{name}.o") for name in ("count", "attrib", "attrib-nopage", "attrib-table")
            if name in configs or (name == "count" and "empty" in configs)}
    load_s = time.monotonic() - t
    progs = {"empty": (objs.get("count"), ["empty"])}
    progs.update({n: (o, ["walk_entry", "walk_exit"]) for n, o in objs.items()})

    m = Mapping(args.size)
    touched = range(0, m.npages, args.every)
    times: dict[str, list[float]] = {}
    harvested: dict[str, list[float]] = {}
    for _ in range(args.blocks):
        for c in ["off"] + configs:
            o, names = progs.get(c, (None, []))
            for n in names:
                o.o.attach(n)
            before = o.stat(S_HARVESTED) if o and c != "empty" else 0
            for _ in range(args.per_block):
                m.touch(touched, flush=True)
                times.setdefault(c, []).append(age(mid))
            if o and c != "empty":
                harvested.setdefault(c, []).append((o.stat(S_HARVESTED) - before) / args.per_block)
            for n in names:
                o.o.detach(n)
    off = statistics.median(times["off"])
    young = "every page young" if args.every == 1 else f"one page in {args.every} young"
    out = [f"# bench/bracket/cost.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: {' '.join(sys.argv)}",
           f"# kernel {os.uname().release} (TCG guest), {os.cpu_count()} CPUs, loadavg at start "
           f"{Path('/proc/loadavg').read_text().split()[0]} (guest); objects loaded in {load_s:.2f} s",
           f"aging pass over {m.npages * PAGE >> 20} MiB, {young} (TLB flushed before each pass); "
           f"blocks of {args.per_block} passes, {args.blocks} per configuration, interleaved",
           f"{'configuration':16} {'passes':>6} {'median ms':>9} {'min ms':>7} {'median/off':>10} {'harvested/pass':>14}"]
    for c in ["off"] + configs:
        h = f"{statistics.mean(harvested[c]):14.0f}" if c in harvested else f"{'':>14}"
        out.append(f"{c:16} {len(times[c]):6d} {1000 * statistics.median(times[c]):9.1f} "
                   f"{1000 * min(times[c]):7.1f} {statistics.median(times[c]) / off:10.3f} {h}")
    for name, b in objs.items():
        s = [b.stat(i) for i in range(6)]
        out.append(f"{name}: walks {s[S_WALKS]}, tables {s[S_TABLES]}, young {s[S_YOUNG]}, harvested "
                   f"{s[S_HARVESTED]}, lost tables {s[S_LOST]}, matched {s[S_MATCHED]}")
        if name.startswith("attrib"):
            heat = b.heat()
            mine = {k: v for k, v in heat.items() if k[0] == os.getpid()}
            regions = {k[1] for k in mine}
            lo, hi = m.addr >> 21, (m.addr >> 21) + m.npages // 512
            inside = sum(v for k, v in mine.items() if lo <= k[1] < hi)
            split: dict[tuple[int, int], int] = {}
            for k, v in mine.items():
                split[(k[2], k[3])] = split.get((k[2], k[3]), 0) + v
            out.append(f"  heat: {len(heat)} keys, this tgid {sum(mine.values())} pages in {len(regions)} "
                       f"regions, in the mapping {inside} pages ({inside / max(1, len(times[name])):.0f} a pass, "
                       f"{len(touched)} touched); "
                       f"(node, lru 0 file/1 anon/2 unknown): {dict(sorted(split.items()))}; "
                       f"node ranges {b.ranges}")
    for b in objs.values():
        b.o.close()
    for line in out:
        print(line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bracket_cost.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
