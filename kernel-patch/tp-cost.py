"""Measure what vmscan:mm_vmscan_lru_gen_young adds to an MGLRU aging pass.

Runs inside the test guest (as root, debugfs mounted), e.g.

    kernel-patch/vm-run.sh --exec 'python3 kernel-patch/tp-cost.py --size 512M --rounds 7'

A workload (tests/vm/tp_workload.py) in a memcg of its own maps SIZE of
anonymous memory (4 KiB pages: the worst case, one event per page). Before
every aging it touches all of it, after flushing its TLB, so each pass finds
every page young. An aging pass is the write of "+ MEMCG NODE MAX_SEQ 1 1" to
/sys/kernel/debug/lru_gen, which returns when the walk is done; its wall time
is what is measured, in three configurations, interleaved round by round:

  off      no program attached, the event disabled (the static branch only)
  empty    a BPF program that returns at once
  counting a stand-in for the program of issue 5: filters on a tgid set and
           adds nr_pages per (tgid, 2 MiB region, node, anon/file) in a
           per-CPU hash
  raw-*    the same two as raw tracepoint programs (see RAW_COUNTING)
  range-*  the same two on mm_vmscan_lru_gen_young_range, one event per
           page table instead of one per page

It prints the minimum and the median per configuration, each with its ratio
to "off". Under TCG only ratios taken in one run mean anything, and a busy
host makes single passes slow at random: the minimum is the robust figure.
"""

import argparse
import ctypes
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bcc import BPF

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))
import lrugen  # noqa: E402  (tests/vm/lrugen.py)

PAGE = 4096
ADDR = 0x3000_0000_0000
CGROUP = Path("/sys/fs/cgroup/mglrud-cost")

EMPTY = b"""
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young)
{
    return 0;
}
"""

# The counting programs' maps and their one update: the key is what mglrud's own
# program (bpf/hotness.bpf.c) keys on; a full map counts a drop instead.
MAPS = b"""
#include <linux/mm_types.h>
#include <linux/sched.h>

struct key {
    u64 region;
    u32 tgid;
    u16 nid;
    u16 type;
};

BPF_HASH(targets, u32, u8, 1024);
BPF_PERCPU_HASH(heat, struct key, u64, 65536);
BPF_PERCPU_ARRAY(dropped, u64, 1);

/* the events carry the mm: its owner's tgid, as mglrud's program reads it */
static u32 owner_tgid(struct mm_struct *mm)
{
    struct task_struct *owner = NULL;
    u32 tgid = 0;

    bpf_probe_read_kernel(&owner, sizeof(owner), &mm->owner);
    if (owner)
        bpf_probe_read_kernel(&tgid, sizeof(tgid), &owner->tgid);
    return tgid;
}

static void add(struct key *k, u64 pages)
{
    u64 zero = 0, *v;
    int idx = 0;

    if (!pages)
        return;
    v = heat.lookup_or_try_init(k, &zero);
    if (v) {
        *v += pages;
    } else {
        v = dropped.lookup(&idx);
        if (v)
            *v += 1;
    }
}
"""

COUNTING = MAPS + b"""
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young)
{
    u32 tgid = owner_tgid((struct mm_struct *)args->mm);
    struct key k = {};

    if (!targets.lookup(&tgid))
        return 0;
    k.region = args->addr >> 21;
    k.tgid = tgid;
    k.nid = args->nid;
    k.type = args->type;
    add(&k, args->nr_pages);
    return 0;
}
"""

# The same two programs as raw tracepoints: no trace record is built (the
# event's TP_fast_assign does not run); the program gets the tracepoint's
# arguments (lruvec, mm, folio, addr, pfn, old_gen, path) and reads
# what it needs itself. Node and type would come from folio->flags; this
# stand-in leaves them out.
RAW_EMPTY = b"""
RAW_TRACEPOINT_PROBE(mm_vmscan_lru_gen_young)
{
    return 0;
}
"""

RAW_COUNTING = b"""
#include <linux/mm_types.h>
#include <linux/sched.h>

struct key {
    u64 region;
    u32 tgid;
    u32 path;
};

BPF_HASH(targets, u32, u8, 1024);
BPF_PERCPU_HASH(heat, struct key, u64, 65536);
BPF_PERCPU_ARRAY(dropped, u64, 1);

RAW_TRACEPOINT_PROBE(mm_vmscan_lru_gen_young)
{
    struct mm_struct *mm = (struct mm_struct *)ctx->args[1];
    struct task_struct *owner = NULL;
    u32 tgid = 0;
    u64 zero = 0, *v;
    struct key k = {};
    int idx = 0;

    bpf_probe_read_kernel(&owner, sizeof(owner), &mm->owner);
    if (owner)
        bpf_probe_read_kernel(&tgid, sizeof(tgid), &owner->tgid);
    if (!targets.lookup(&tgid))
        return 0;
    k.region = ctx->args[3] >> 21;
    k.tgid = tgid;
    k.path = ctx->args[6];
    v = heat.lookup_or_try_init(&k, &zero);
    if (v) {
        *v += k.path == 1 ? 512 : 1;
    } else {
        v = dropped.lookup(&idx);
        if (v)
            *v += 1;
    }
    return 0;
}
"""

# The same, on the per-range event: one event per PTE table (2 MiB), whose
# nr_young and nr_file are the counts to add.
RANGE_EMPTY = b"""
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young_range)
{
    return 0;
}
"""

RANGE_COUNTING = MAPS + b"""
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young_range)
{
    u32 tgid = owner_tgid((struct mm_struct *)args->mm);
    struct key k = {};

    if (!targets.lookup(&tgid))
        return 0;
    k.region = args->addr >> 21;
    k.tgid = tgid;
    k.nid = args->nid;
    k.type = 0;
    add(&k, (u64)(args->nr_young - args->nr_file) * args->nr_pages);
    k.type = 1;
    add(&k, (u64)args->nr_file * args->nr_pages);
    return 0;
}
"""


class Prog:
    """One BPF program on one of the tracepoints, loaded once, attached per pass."""

    def __init__(self, text: bytes, raw: bool = False, event: bytes = b"mm_vmscan_lru_gen_young"):
        self.raw = raw
        self.tp = event if raw else b"vmscan:" + event
        self.fn = (b"raw_tracepoint__" if raw else b"tracepoint__vmscan__") + event
        self.bpf = BPF(text=text)
        self.detach()

    def attach(self) -> None:
        if self.raw:
            self.bpf.attach_raw_tracepoint(tp=self.tp, fn_name=self.fn)
        else:
            self.bpf.attach_tracepoint(tp=self.tp, fn_name=self.fn)

    def detach(self) -> None:
        if self.raw:
            self.bpf.detach_raw_tracepoint(tp=self.tp)
        else:
            self.bpf.detach_tracepoint(self.tp)

    def pages(self) -> tuple[int, int]:
        heat = sum(sum(v) for v in self.bpf[b"heat"].values())
        dropped = sum(sum(v) for v in self.bpf[b"dropped"].values())
        return heat, dropped


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


class Workload:
    def __init__(self, npages: int):
        CGROUP.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/vm/tp_workload.py"), "--cgroup", str(CGROUP),
             "--node", "0", "--cpu", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self(f"map A {ADDR:#x} {npages} anon")

    def __call__(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"tp_workload: {command!r} -> {answer}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def timed_aging(mid: int) -> float:
    seq = lrugen.read()[(mid, 0)]["gens"][-1][0]
    start = time.perf_counter()
    with open(lrugen.LRU_GEN, "w") as f:
        f.write(f"+ {mid} 0 {seq} 1 1")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=size, default=512 << 20)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    npages = args.size // PAGE

    progs = {
        "empty": Prog(EMPTY, raw=False),
        "counting": Prog(COUNTING, raw=False),
        "raw-empty": Prog(RAW_EMPTY, raw=True),
        "raw-counting": Prog(RAW_COUNTING, raw=True),
        "range-empty": Prog(RANGE_EMPTY, event=b"mm_vmscan_lru_gen_young_range"),
        "range-counting": Prog(RANGE_COUNTING, event=b"mm_vmscan_lru_gen_young_range"),
    }
    counters = ("counting", "raw-counting", "range-counting")
    names = ["off", *progs]

    w = Workload(npages)
    try:
        for name in counters:
            progs[name].bpf[b"targets"][ctypes.c_uint(w.pid)] = ctypes.c_ubyte(1)
        mid = lrugen.memcg_id("/mglrud-cost")
        w("touch A all")
        w("drain")
        timed_aging(mid)  # the first pass also moves the fresh pages; not counted

        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                w("touch A all")
                prog = progs.get(name)
                if prog:
                    prog.attach()
                try:
                    times[name].append(timed_aging(mid))
                finally:
                    if prog:
                        prog.detach()
            print(f"round {r}: " + " ".join(f"{n}={t[-1] * 1000:.1f}ms" for n, t in times.items()),
                  flush=True)

        print(f"workload: {npages} pages ({args.size >> 20} MiB) of 4 KiB anon, all young each pass")
        for name in counters:
            pages, dropped = progs[name].pages()
            print(f"{name} saw {pages} pages in {args.rounds} passes "
                  f"({pages / args.rounds:.0f} per pass), dropped {dropped}")
        # The minimum is the pass least disturbed by whatever else runs on the
        # host (TCG vCPUs are host threads); the median shows the spread.
        med = {n: statistics.median(t) for n, t in times.items()}
        low = {n: min(t) for n, t in times.items()}
        for n in names:
            print(f"{n:15s} min {low[n] * 1000:7.1f} ms (x{low[n] / low['off']:.2f})  "
                  f"median {med[n] * 1000:7.1f} ms (x{med[n] / med['off']:.2f})  "
                  f"all: {' '.join(f'{t * 1000:.1f}' for t in times[n])}")
    finally:
        w.stop()
        for _ in range(50):
            try:
                CGROUP.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
