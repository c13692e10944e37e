"""BPF hotness source: accuracy against known ground truth, aging overhead, daemon cost. VM only.

Runs inside the test guest (it needs mglrud's tracepoint, or on Debian's stock kernel the
accessed-bit probe of docs/stock-kernel.md, and bcc):
  kernel-patch/vm-run.sh --out DIR --exec '/usr/bin/python3 bench/bpf_hotness.py --out DIR'
and prints the figures; they also go to DIR/bpf_hotness.txt (copy to bench/results/).

Accuracy. The bench process moves itself into a memcg of its own, maps an
anonymous region of --size bytes, faults it in, attaches mglrud's program
(mglrud.sources.bpf_hotness.Program, the daemon's own loader) with its own tgid
as the target, and then, for each pattern, repeats: touch a known set of pages,
age the memcg (debugfs lru_gen), read the map and compute the deltas with
mglrud.hotness.step(). Ground truth per round is the set of pages the bench
touched since the previous aging; a 2 MiB region is truly hot when it holds one
of them. Per round: precision and recall of the regions the source reports
accessed (delta > 0) inside the mapping; the page-count error (pages reported vs
pages touched in the mapping); and, after the last round of each pattern, the
cold fraction (bytes in regions not found accessed for >= 1 round) against the
true fraction of pages not touched in the last round. Patterns:
  hot block   the first 1/4 of the mapping, every round
  scattered   8 random pages in each of a random 1/4 of the regions (same set every round)
  moving      a block of 1/8 of the mapping that moves by its own size every round
  gaussian    N page touches with a normal distribution over the pages (mean at the middle,
              sigma 1/16 of the mapping), a fresh sample every round

Overhead. One hot mapping (every page touched, after a TLB flush, before each
aging); the time of the aging write, in interleaved blocks: without the program,
with it on the range event (what mglrud uses), with it on the per-entry event;
same process, same run; ratios of medians.

Daemon. `mglrud run` with the BPF source and one process target (a
tests/vm/workload.py process), snapshots every 1 s and aging every 3 s: user+system
CPU of the daemon per cycle and its RSS, after --daemon-seconds, with what the RSS
is made of (resident bytes per mapping from /proc/PID/smaps) and whether bcc's
LLVM or clang is mapped in the daemon (it should not be: mglrud/bpf_loader.py).

Figures are from a TCG guest (10-50x slower than hardware): compare ratios,
not absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import ctypes
import mmap
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vm"))

import lrugen  # noqa: E402

from mglrud.model import hotness as H  # noqa: E402
from mglrud.config import Bpf, Paths  # noqa: E402
from mglrud.fs import FS  # noqa: E402
from mglrud.sources.bpf_hotness import Program  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
SHIFT = 21
CG = Path("/sys/fs/cgroup/mglrud-bench")


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


class Mapping:
    def __init__(self, nbytes: int):
        # 2 MiB aligned so that region r of the mapping is exactly pages [r*512, (r+1)*512)
        self.raw = mmap.mmap(-1, nbytes + (2 << 20), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.raw))
        self.skip = (-base) % (2 << 20)
        self.addr = base + self.skip
        self.npages = nbytes // PAGE
        self.madvise_nohuge()
        for p in range(self.npages):
            self.raw[self.skip + p * PAGE] = 1

    def madvise_nohuge(self) -> None:
        # 4 KiB pages: a THP would report one PMD event for 512 pages
        try:
            self.raw.madvise(mmap.MADV_NOHUGEPAGE)
        except (AttributeError, OSError):
            pass

    def flush_tlb(self) -> None:
        # The CPU sets an accessed bit when it walks the page table, not on a TLB hit, and
        # the aging clears accessed bits without flushing the TLB (as tests/vm/tp_workload.py
        # explains): an mprotect() round trip flushes the range, so every touch is seen.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        n = self.npages * PAGE
        if libc.mprotect(self.addr, n, 0) or libc.mprotect(self.addr, n, 3):
            raise OSError(ctypes.get_errno(), "mprotect")

    def touch(self, pages, flush: bool = False) -> None:
        if flush:
            self.flush_tlb()
        raw, skip = self.raw, self.skip
        for p in pages:
            raw[skip + p * PAGE] = (raw[skip + p * PAGE] + 1) & 0xFF

    def region(self, page: int) -> int:
        return (self.addr >> SHIFT) + page // 512


AGINGS: list[tuple[int, int]] = []  # (start, end) CLOCK_MONOTONIC ns of each aging


def age(mid: int) -> float:
    t = time.monotonic_ns()
    lrugen.age(mid, 0)
    AGINGS.append((t, time.monotonic_ns()))
    return (AGINGS[-1][1] - t) / 1e9


def accuracy(prog: Program, m: Mapping, mid: int, rounds: int, seed: int, flush: bool) -> list[str]:
    rnd = random.Random(seed)
    n, nreg = m.npages, m.npages // 512
    mine = set(range(m.addr >> SHIFT, (m.addr >> SHIFT) + nreg))
    scattered_regions = rnd.sample(range(nreg), nreg // 4)
    scattered = sorted({r * 512 + rnd.randrange(512) for r in scattered_regions for _ in range(8)})
    patterns = {
        "hot block": lambda i: range(n // 4),
        "scattered": lambda i: scattered,
        "moving": lambda i: range((i % 8) * (n // 8), (i % 8 + 1) * (n // 8)),
        "gaussian": lambda i: sorted({min(n - 1, max(0, int(rnd.gauss(n / 2, n / 16)))) for _ in range(n // 8)}),
    }
    lines = [f"{'pattern':10} {'rounds':>6} {'precision':>9} {'recall':>7} {'pages err':>9} "
             f"{'cold true':>9} {'cold region':>11} {'err pp':>7} {'cold pages':>10} {'err pp':>7}"]
    state = H.step({}, H.raw_from_dump(prog.dump()), 60.0)
    for name, pattern in patterns.items():
        # settle: one aging with nothing touched clears what the previous pattern left young
        age(mid)
        state = H.step(state, H.raw_from_dump(prog.dump()), 60.0)
        precisions, recalls, page_errs = [], [], []
        last_seen: dict[int, int] = {}
        truth, found = set(), {}
        for i in range(rounds):
            truth = set(pattern(i))
            m.touch(truth, flush)
            age(mid)
            state = H.step(state, H.raw_from_dump(prog.dump()), 60.0)
            found: dict[int, int] = {}
            for k, s in state.items():
                if k.region in mine and s.delta_pages:
                    found[k.region] = found.get(k.region, 0) + s.delta_pages
            true_regions = {m.region(p) for p in truth}
            tp = len(set(found) & true_regions)
            precisions.append(tp / len(found) if found else 1.0)
            recalls.append(tp / len(true_regions) if true_regions else 1.0)
            page_errs.append(abs(sum(found.values()) - len(truth)) / max(1, len(truth)))
            for r in found:
                last_seen[r] = i
        # cold: not found accessed in the latest round
        cold_true = 1 - len(truth) / n
        # at region precision (what mglrud_target_region_cold_bytes does): a region is cold
        # when none of its pages was found; with page counts: pages not found
        cold_region = sum(1 for r in mine if last_seen.get(r, -1) < rounds - 1) / nreg
        # and what mglrud_target_region_cold_bytes reports (hotness.cold_bytes: page counts per
        # region, every page resident), at a threshold between the last two agings
        now = time.monotonic_ns()
        threshold = (now - (AGINGS[-2][1] + AGINGS[-1][0]) / 2) / 1e9
        cells = [H.RegionHeat(k.tgid, k.memcg_id, k.region << SHIFT, k.node, k.lru, 512, s.delta_pages,
                              s.total_pages, s.rate, H.idle_seconds(s, now),
                              tuple(((now - t) / 1e9, c) for t, c in reversed(s.history)))
                 for k, s in state.items() if k.region in mine]
        cells += [H.RegionHeat(0, 0, r << SHIFT, 0, "anon", 512, 0, 0, 0.0, math.inf)
                  for r in mine - {c.start >> SHIFT for c in cells}]
        cold_pages = H.cold_bytes(cells, threshold, PAGE) / (n * PAGE)
        lines.append(f"{name:10} {rounds:6d} {100 * statistics.mean(precisions):8.1f}% "
                     f"{100 * statistics.mean(recalls):6.1f}% {100 * statistics.mean(page_errs):8.2f}% "
                     f"{100 * cold_true:8.1f}% {100 * cold_region:10.1f}% {100 * (cold_region - cold_true):+7.1f} "
                     f"{100 * cold_pages:9.1f}% {100 * (cold_pages - cold_true):+7.1f}")
    return lines


# An fexit program that does nothing: what the BPF trampoline on the accessed-bit helper costs
# by itself, apart from what mglrud's program does in it (docs/stock-kernel.md). No kernel types:
# the arguments are only declared.
EMPTY_FEXIT = r"""
KRETFUNC_PROBE(ptep_test_and_clear_young, void *vma, unsigned long addr, void *ptep, int ret)
{
	return 0;
}
"""


class EmptyFexit:
    """EMPTY_FEXIT compiled once (bcc attaches it at load), detached and attached again per block."""

    FN = b"ptep_test_and_clear_young"

    def __init__(self):
        from bcc import BPF  # Debian's python3-bpfcc; the bench runs in the test guest

        self.bpf = BPF(text=EMPTY_FEXIT)
        self.bpf.detach_kretfunc(fn_name=self.FN)

    def attach(self) -> None:
        self.bpf.attach_kretfunc(fn_name=self.FN)

    def detach(self) -> None:
        self.bpf.detach_kretfunc(fn_name=self.FN)


def overhead(mid: int, m: Mapping, blocks: int, per_block: int, cfg: Bpf, events: list[str],
             every: int = 1) -> list[str]:
    """Blocks of passes without the program and with it on each event, interleaved. The event
    fexit-empty is EMPTY_FEXIT: the trampoline's own cost on a stock kernel. `every`: one page
    in that many is touched before each pass (1: all young; more: a sparse pass)."""
    touched = range(0, m.npages, every)
    times: dict[str, list[float]] = {"off": []}
    counted: dict[str, list[float]] = {}
    compile_s = []
    empty = EmptyFexit() if "fexit-empty" in events else None
    attached_as: dict[str, set] = {}
    for b in range(blocks):
        for event in ["off"] + events:
            prog = None
            if event == "fexit-empty":
                empty.attach()
            elif event != "off":
                t = time.monotonic()
                # EVENT=PATH: the same attachment with another program file (a baseline to compare with)
                name, _, path = event.partition("=")
                prog = Program(dataclasses.replace(cfg, program=path) if path else cfg, FS(Paths()), event=name)
                if prog.event != name:  # the loader fell back (fexit did not load): say so, not a wrong label
                    print(f"# {event}: attached as {prog.event}: {getattr(prog, 'fallback', '')}", flush=True)
                    attached_as.setdefault(event, set()).add(prog.event)
                compile_s.append(time.monotonic() - t)
                prog.set_targets({os.getpid()}, {mid})
            for _ in range(per_block):
                m.touch(touched, flush=True)  # these pages young at every pass
                times.setdefault(event, []).append(age(mid))
            if prog:
                d = prog.dump()
                counted.setdefault(event, []).append(sum(c for v in d["heat"] for c, _, _ in v["percpu"]) / per_block)
                prog.close()
            elif event == "fexit-empty":
                empty.detach()
                counted.setdefault(event, []).append(0)
    off = statistics.median(times["off"])
    young = "every page young" if every == 1 else f"one page in {every} young ({len(touched)} pages)"
    lines = [f"aging pass over {m.npages * PAGE >> 20} MiB, {young} (TLB flushed before each pass); "
             f"blocks of {per_block} passes, {blocks} per configuration, interleaved",
             f"{'configuration':40} {'passes':>6} {'median ms':>9} {'min ms':>7} {'median/off':>10} {'pages/pass':>10}",
             f"{'off (no program)':40} {len(times['off']):6d} {1000 * off:9.1f} {1000 * min(times['off']):7.1f} "
             f"{1.0:10.3f} {'':>10}"]
    for e in events:
        label = "nothing on fexit" if e == "fexit-empty" else "counting on " + e.partition("=")[0] + (
            f" ({Path(e.partition('=')[2]).name})" if "=" in e else "")
        lines.append(f"{label:40} {len(times[e]):6d} {1000 * statistics.median(times[e]):9.1f} "
                     f"{1000 * min(times[e]):7.1f} {statistics.median(times[e]) / off:10.3f} "
                     f"{statistics.mean(counted[e]):10.0f}")
    lines += [f"({e} fell back to {', '.join(sorted(a))} in some blocks)" for e, a in attached_as.items()]
    lines.append(f"(pages/pass: pages the program counted per pass; program compile+attach "
                 f"{statistics.median(compile_s):.1f} s median under TCG)")
    return lines


def rss_by_mapping(pid: int) -> list[tuple[str, int]]:
    """Resident kB per mapped file ([heap], [anon] for anonymous mappings), largest first."""
    out: dict[str, int] = {}
    cur = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            cur = parts[5].strip() if len(parts) > 5 else "[anon]"
            cur = cur.rsplit("/", 1)[-1]
        elif line.startswith("Rss:"):
            out[cur] = out.get(cur, 0) + int(line.split()[1])
    return sorted(out.items(), key=lambda x: -x[1])


def daemon_cost(tmp: Path, seconds: float) -> list[str]:
    CG.joinpath("d").mkdir(exist_ok=True)
    w = subprocess.Popen([sys.executable, str(REPO / "tests/vm/workload.py"), "--size", "128M", "--hot", "32M",
                          "--cgroup", str(CG / "d"), "--seconds", str(seconds + 300)], stdout=subprocess.PIPE, text=True)
    w.stdout.readline()
    cfg = tmp / "bench.yaml"
    cfg.write_text(f"sources: [bpf, lru_gen]\naging: {{interval: 3s}}\nsnapshot: {{interval: 1s}}\n"
                   f"metrics: {{cold_thresholds: [3s, 6s]}}\ntargets: [{{name: w, pid: {w.pid}}}]\n")
    log = tmp / "bench-daemon.log"
    with open(log, "w") as out:
        d = subprocess.Popen([sys.executable, "-m", "mglrud", "run", "-c", str(cfg), "--listen.port", "0"],
                             cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = None
        for _ in range(600):
            m = re.search(r"serving http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
            if m:
                base = f"http://127.0.0.1:{m.group(1)}"
                break
            time.sleep(0.5)
        if not base:
            return [f"daemon did not start: {log.read_text(errors='replace')[-2000:]}"]
        time.sleep(10)  # past the start-up (compile) and first cycles

        def cpu() -> float:
            f = Path(f"/proc/{d.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        def snap_time() -> float:
            with urllib.request.urlopen(base + "/snapshot.json", timeout=60) as r:
                import json
                return json.loads(r.read())["taken_at"]

        c0, t0, cycles = cpu(), time.monotonic(), 0
        last = snap_time()
        while time.monotonic() - t0 < seconds:
            time.sleep(0.25)
            t = snap_time()
            if t != last:
                cycles, last = cycles + 1, t
        c1 = cpu()
        with urllib.request.urlopen(base + "/metrics", timeout=60) as r:
            text = r.read().decode()
        runs = re.search(r"^mglrud_aging_runs_total (\S+)$", text, re.M)
        rss = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{d.pid}/status").read_text())
        hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{d.pid}/status").read_text())
        libs = [name for name, _ in rss_by_mapping(d.pid) if "LLVM" in name or "clang" in name or "bcc" in name]
        return [f"daemon: {cycles} snapshots in {seconds:.0f} s (aging every 3 s, {runs.group(1) if runs else '?'} "
                f"agings in total), user+system CPU {1000 * (c1 - c0) / max(1, cycles):.0f} ms per snapshot "
                f"under TCG; RSS {int(rss.group(1)) / 1024:.1f} MiB (peak {int(hwm.group(1)) / 1024:.1f} MiB); "
                f"target: one process, 128 MiB anon, 32 MiB hot, 2 MiB regions, 64 heat buckets",
                "daemon RSS by mapping: " + ", ".join(f"{name} {kb / 1024:.1f}" for name, kb in
                                                     rss_by_mapping(d.pid)[:8]) + " (MiB)",
                f"bcc/LLVM/clang mapped in the daemon: {', '.join(libs) if libs else 'none'}"]
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=60)
        except subprocess.TimeoutExpired:
            d.kill()
        w.kill()
        w.wait()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp"))
    p.add_argument("--size", type=size, default=128 << 20)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--overhead-size", type=size, default=256 << 20)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--per-block", type=int, default=4)
    p.add_argument("--sparse", type=int, default=0, help="also an overhead table where one page in N is "
                   "young at each pass (0: none)")
    p.add_argument("--daemon-seconds", type=float, default=60)
    p.add_argument("--skip", default="", help="comma-separated: accuracy,overhead,daemon")
    p.add_argument("--accuracy-events", default="", help="comma-separated attachments the accuracy tables "
                   "are made for, one program at a time: a tracepoint name, fexit, kretprobe (default: the "
                   "one the daemon picks)")
    p.add_argument("--tlb", choices=("both", "flush", "noflush"), default="both",
                   help="accuracy with the TLB flushed before each round's touches, without, or both")
    p.add_argument("--events", default="", help="comma-separated attachments the overhead compares: "
                   "tracepoint names, fexit, kretprobe, fexit-empty (a program that does nothing: the "
                   "trampoline's cost), EVENT=PATH (that attachment with the program file PATH instead of "
                   "bpf/hotness.bpf.c: before/after in one run) (default: both tracepoints, or on a kernel without "
                   "them, e.g. Debian's stock one, fexit)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    stock = not Path("/sys/kernel/tracing/events/vmscan/mm_vmscan_lru_gen_young").exists()
    events = [e for e in args.events.split(",") if e] or (
        ["fexit"] if stock else ["mm_vmscan_lru_gen_young_range", "mm_vmscan_lru_gen_young"])
    enabled = Path("/sys/kernel/mm/lru_gen/enabled")
    if int(enabled.read_text(), 16) == 0:
        # a stock kernel with MGLRU built in but off (Debian's); this bench runs in a test guest only
        enabled.write_text("y")
        print("# MGLRU was off: switched on for the bench (guest only)", flush=True)

    CG.mkdir(exist_ok=True)
    (CG / "cgroup.subtree_control").write_text("+memory")
    (CG / "a").mkdir(exist_ok=True)
    (CG / "a" / "cgroup.procs").write_text(str(os.getpid()))
    mid = lrugen.memcg_id("/mglrud-bench/a")
    cfg = Bpf()
    out = [f"# bench/bpf_hotness.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: {' '.join(sys.argv)}",
           f"# kernel {os.uname().release} (TCG guest), {os.cpu_count()} CPUs; 2 MiB regions, 4 KiB pages"]

    def emit(lines):
        for line in lines:
            print(line, flush=True)
            out.append(line)

    if "accuracy" not in skip:
        m = Mapping(args.size)
        for event in [e for e in args.accuracy_events.split(",") if e] or [None]:
            prog = Program(cfg, FS(Paths()), event=event)
            prog.set_targets({os.getpid()}, set())
            where = prog.event if prog.event in ("fexit", "kretprobe") else "vmscan:" + prog.event
            emit(["", f"# program attached to {where}"])
            for flush in {"both": (False, True), "flush": (True,), "noflush": (False,)}[args.tlb]:
                emit(["", f"## accuracy ({where}): {args.size >> 20} MiB mapping, {args.rounds} rounds per "
                          f"pattern (one aging per round), regions found accessed vs regions holding a touched "
                          f"page; " + ("TLB flushed before each round's touches" if flush else
                                       "no TLB flush (touches through a stale TLB entry set no accessed bit)")])
                emit(accuracy(prog, m, mid, args.rounds, seed=5, flush=flush))
            prog.close()
        del m
    if "overhead" not in skip:
        m = Mapping(args.overhead_size)
        emit(["", "## overhead: aging pass time, program attached / not attached"])
        emit(overhead(mid, m, args.blocks, args.per_block, cfg, events))
        if args.sparse > 1:
            emit(["", f"## overhead, sparse: one page in {args.sparse} young"])
            emit(overhead(mid, m, args.blocks, args.per_block, cfg, events, every=args.sparse))
        del m
    if "daemon" not in skip:
        emit(["", "## daemon cost"])
        emit(daemon_cost(args.out, args.daemon_seconds))
    (args.out / "bpf_hotness.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
