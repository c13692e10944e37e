"""mglrud's BPF source side by side with DAMON's virtual address monitoring, same workload, same guest.

TEST GUEST ONLY. DAMON is driven through /sys/kernel/mm/damon/admin, which the
host machine uses itself: this script refuses to run (before it reads or writes
anything there) unless the kernel is the project's test kernel booted by
virtme-ng (uname -r equal to kernel-patch/BASE's version and "virtme" on
/proc/cmdline). Run it only through the VM bench:

  kernel-patch/vm-run.sh --out DIR --exec '/usr/bin/python3 bench/damon_compare.py --out DIR'

(the figures in bench/results/damon_compare.txt: --rounds 4 --window 3, and the two
DAMON configurations of the default --damon: DAMON's own defaults, and one with
10x the samples per aggregation and 10x the regions).

It prints a table and writes DIR/damon_compare.txt (copy to bench/results/).

The workload: a child process (this file with --toucher) maps --size bytes of
anonymous memory (4 KiB pages, 2 MiB aligned) in a memcg of its own, faults it
in, then touches the set of pages it is given over and over (each pass after a
TLB flush of those pages, so that every touch sets an accessed bit; see
bench/bpf_hotness.py) until it is given another set. It holds still (between two
passes) while mglrud's aging walks it: the TLB flush takes the mmap lock for
writing, and an MGLRU walk that finds it taken skips the process for that pass. The sets are bench/bpf_hotness.py's accuracy
patterns, drawn once with a fixed seed so that both methods see exactly the same
rounds: hot block (first 1/4), scattered (8 pages in each of a random 1/4 of the
2 MiB regions), moving (1/8 of the mapping, moving by its size each round),
Gaussian (N/8 page draws, mean at the middle, sigma 1/16 of the mapping).

Each round gives the workload its set, then, after --window seconds of touching:
- DAMON (operations vaddr, one target: the workload's pid; a scheme with action
  `stat` and an access pattern that matches every region): `update_schemes_tried_regions`
  and read each region's start, end and nr_accesses (accessed samples in the
  latest aggregation interval). A 2 MiB region of the mapping counts as found
  accessed when more than half of its bytes lie in DAMON regions with
  nr_accesses > 0.
- mglrud (the daemon's Program on the range tracepoint, the workload's tgid as
  target): the memcg is aged at the start of the window (what the previous
  pattern left young is cleared) and at its end; the regions with pages counted
  by the second aging are found accessed.

Per round, against the truth (2 MiB regions holding a page of the round's set):
precision and recall of the regions found accessed, and the cold fraction
(regions not found accessed / all regions of the mapping) minus the true one,
in percentage points; also the cold fraction by bytes (DAMON: bytes in regions
with nr_accesses 0; mglrud: pages not counted) against the true fraction of
pages not touched. CPU: kdamond's thread (utime+stime of /proc/PID/stat, PID
from kdamonds/0/pid) over its phase; mglrud: this process's user+system CPU in
the aging writes (the aging walk, and the BPF program inside it, run in the
writer's context) and the map reads, over its phase. Both as a share of one
CPU over wall time. TCG guest: compare within one run only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vm"))
sys.path.insert(0, str(REPO / "bench"))

PAGE = os.sysconf("SC_PAGE_SIZE")
SHIFT = 21
REGION = 1 << SHIFT
ADMIN = Path("/sys/kernel/mm/damon/admin")
CG = Path("/sys/fs/cgroup/mglrud-damon")
ULONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1


# ---------------------------------------------------------------- the guard

def project_kernel_version() -> str:
    for line in (REPO / "kernel-patch" / "BASE").read_text().splitlines():
        if line.startswith("version="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("damon_compare.py: kernel-patch/BASE names no version")


def not_the_test_guest() -> str:
    """Why this is not the test guest ("" when it is)."""
    release, want = os.uname().release, project_kernel_version()
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        cmdline = ""
    if release != want:
        return f"kernel {release} is not the project's test kernel {want}"
    if "virtme" not in cmdline:
        return "/proc/cmdline has no virtme parameters: not a virtme-ng guest"
    return ""


# ---------------------------------------------------------------- DAMON through sysfs

class Damon:
    """One kdamond, one vaddr context, one target, one `stat` scheme (Documentation/admin-guide/mm/damon/usage.rst)."""

    def __init__(self, pid: int, sample_us: int, aggr_us: int, update_us: int, min_regions: int, max_regions: int):
        why = not_the_test_guest()
        if why:  # checked again here: no path may write DAMON's files outside the guest
            raise SystemExit(f"damon_compare.py: refusing to touch DAMON: {why}")
        nr = ADMIN / "kdamonds" / "nr_kdamonds"
        if int(nr.read_text()) != 0:
            raise SystemExit("damon_compare.py: a kdamond is already configured; not touching it")
        self.written: list[tuple[str, str]] = []
        self.w(nr, 1)
        self.k = ADMIN / "kdamonds" / "0"
        self.w(self.k / "contexts" / "nr_contexts", 1)
        c = self.k / "contexts" / "0"
        self.w(c / "operations", "vaddr")
        attrs = c / "monitoring_attrs"
        self.w(attrs / "intervals" / "sample_us", sample_us)
        self.w(attrs / "intervals" / "aggr_us", aggr_us)
        self.w(attrs / "intervals" / "update_us", update_us)
        self.w(attrs / "nr_regions" / "max", max_regions)
        self.w(attrs / "nr_regions" / "min", min_regions)
        self.w(c / "targets" / "nr_targets", 1)
        self.w(c / "targets" / "0" / "pid_target", pid)
        self.w(c / "schemes" / "nr_schemes", 1)
        self.s = c / "schemes" / "0"
        self.w(self.s / "action", "stat")
        for name, top in (("sz", ULONG_MAX), ("nr_accesses", UINT_MAX), ("age", UINT_MAX)):
            self.w(self.s / "access_pattern" / name / "max", top)
            self.w(self.s / "access_pattern" / name / "min", 0)
        self.w(self.k / "state", "on")
        self.pid = int((self.k / "pid").read_text())

    def w(self, path: Path, value) -> None:
        path.write_text(str(value))
        self.written.append((str(path), str(value)))

    def cpu_seconds(self) -> float:
        f = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def regions(self) -> list[tuple[int, int, int, int]]:
        """(start, end, nr_accesses, age) of every region, as of the next scheme application."""
        self.w(self.k / "state", "update_schemes_tried_regions")
        out = []
        tried = self.s / "tried_regions"
        for d in tried.iterdir():
            if d.name.isdigit():
                out.append(tuple(int((d / f).read_text()) for f in ("start", "end", "nr_accesses", "age")))
        return sorted(out)

    def stop(self) -> None:
        try:
            self.w(self.k / "state", "off")
        finally:
            self.w(ADMIN / "kdamonds" / "nr_kdamonds", 0)


# ---------------------------------------------------------------- the workload

def runs_of(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted pages -> (first page, count) of each contiguous run."""
    out: list[list[int]] = []
    for p in pages:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return [(a, n) for a, n in out]


def toucher(size: int, cgroup: str) -> int:
    from bpf_hotness import Mapping

    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    m = Mapping(size)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    state = {"pages": [], "runs": [], "gen": 0, "pause": False}
    idle = threading.Event()

    def reader() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd == "pause":  # answered once the loop is between passes: no mprotect under way
                idle.clear()
                state["pause"] = True
                idle.wait()
            elif cmd == "go":
                state["pause"] = False
            else:
                state["pages"], state["runs"], state["gen"] = cmd, runs_of(cmd), state["gen"] + 1
            print("ok", flush=True)
        os._exit(0)

    threading.Thread(target=reader, daemon=True).start()
    print(f"ready {m.addr:#x} {m.npages}", flush=True)
    raw, skip = m.raw, m.skip
    while True:
        if state["pause"] or not state["pages"]:
            idle.set()
            time.sleep(0.002)
            continue
        pages, runs, gen = state["pages"], state["runs"], state["gen"]
        # A TLB flush of exactly the pages about to be touched (the aging and DAMON clear
        # accessed bits without one): an mprotect() round trip per run. Not one call over the
        # whole mapping: that would hold the mmap lock for writing most of the time, and the
        # MGLRU walk skips an mm whose lock it cannot take (walk_mm(): mmap_read_trylock()).
        for a, n in runs:
            if libc.mprotect(m.addr + a * PAGE, n * PAGE, 0) or libc.mprotect(m.addr + a * PAGE, n * PAGE, 3):
                raise OSError(ctypes.get_errno(), "mprotect")
        for i in range(0, len(pages), 256):
            if state["gen"] != gen or state["pause"]:
                break
            for p in pages[i:i + 256]:
                raw[skip + p * PAGE] = (raw[skip + p * PAGE] + 1) & 0xFF
        time.sleep(0.005)


class Workload:
    def __init__(self, size: int, cgroup: Path):
        self.proc = subprocess.Popen([sys.executable, __file__, "--toucher", "--size", str(size),
                                      "--cgroup", str(cgroup)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        words = self.proc.stdout.readline().split()
        if not words or words[0] != "ready":
            raise SystemExit(f"damon_compare.py: the workload did not start: {words}")
        self.addr, self.npages = int(words[1], 0), int(words[2])

    def _send(self, cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise SystemExit("damon_compare.py: the workload stopped answering")

    def touch(self, pages) -> None:
        """From now on touch these pages, over and over."""
        self._send(sorted(pages))

    def pause(self) -> None:
        self._send("pause")

    def go(self) -> None:
        self._send("go")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def patterns(npages: int, rounds: int, seed: int) -> dict[str, list[set[int]]]:
    """bench/bpf_hotness.py's patterns, every round's page set drawn up front."""
    rnd = random.Random(seed)
    n, nreg = npages, npages // 512
    scattered_regions = rnd.sample(range(nreg), nreg // 4)
    scattered = {r * 512 + rnd.randrange(512) for r in scattered_regions for _ in range(8)}
    return {
        "hot block": [set(range(n // 4)) for _ in range(rounds)],
        "scattered": [set(scattered) for _ in range(rounds)],
        "moving": [set(range((i % 8) * (n // 8), (i % 8 + 1) * (n // 8))) for i in range(rounds)],
        "gaussian": [{min(n - 1, max(0, int(rnd.gauss(n / 2, n / 16)))) for _ in range(n // 8)}
                     for _ in range(rounds)],
    }


# ---------------------------------------------------------------- scoring

def score(found: set[int], cold_bytes_frac: float, truth: set[int], nreg: int, npages: int) -> dict:
    """found: indexes (0..nreg-1) of the mapping's 2 MiB regions found accessed."""
    true_regions = {p // 512 for p in truth}
    tp = len(found & true_regions)
    return {"precision": tp / len(found) if found else 1.0,
            "recall": tp / len(true_regions) if true_regions else 1.0,
            "cold_region_err": (1 - len(found) / nreg) - (1 - len(true_regions) / nreg),
            "cold_bytes_err": cold_bytes_frac - (1 - len(truth) / npages)}


def damon_found(regions, addr: int, npages: int) -> tuple[set[int], float]:
    nreg, end = npages // 512, addr + npages * PAGE
    hot_bytes = [0] * nreg
    cold = 0
    for s, e, nr, _ in regions:
        a, z = max(s, addr), min(e, end)
        if a >= z:
            continue
        if not nr:
            cold += z - a
            continue
        for r in range((a - addr) // REGION, (z - 1 - addr) // REGION + 1):
            lo = addr + r * REGION
            hot_bytes[r] += min(z, lo + REGION) - max(a, lo)
    return {r for r in range(nreg) if hot_bytes[r] * 2 > REGION}, cold / (npages * PAGE)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- the two runs

def run_damon(w: Workload, pats, window: float, conf: tuple[int, int, int, int],
              raw_out: list | None = None) -> tuple[dict, float, str]:
    sample_us, aggr_us, min_r, max_r = conf
    d = Damon(w.proc.pid, sample_us, aggr_us, 1_000_000, min_r, max_r)
    nreg = w.npages // 512
    results: dict[str, list[dict]] = {}
    sizes, covered, retries = [], [], 0
    end = w.addr + w.npages * PAGE
    try:
        c0, t0 = d.cpu_seconds(), time.monotonic()
        for name, rounds in pats.items():
            for truth in rounds:
                w.touch(truth)
                time.sleep(window)
                for _ in range(10):
                    # under TCG an update can time out inside DAMON (upd_timeout_jiffies) and leave
                    # the tried regions empty or partial: ask again until they cover the mapping
                    regs = d.regions()
                    cover = sum(max(0, min(e, end) - max(s, w.addr)) for s, e, _, _ in regs) / (end - w.addr)
                    if cover > 0.999:
                        break
                    retries += 1
                sizes.append(len(regs))
                covered.append(cover)
                if raw_out is not None:
                    raw_out.append({"conf": conf, "pattern": name, "mapping": [w.addr, end],
                                    "regions": [r for r in regs if r[1] > w.addr and r[0] < end]})
                found, cold = damon_found(regs, w.addr, w.npages)
                results.setdefault(name, []).append(score(found, cold, truth, nreg, w.npages))
        cpu = (d.cpu_seconds() - c0) / (time.monotonic() - t0)
    finally:
        d.stop()
    label = (f"DAMON vaddr, sample {sample_us / 1000:g} ms, aggregation {aggr_us / 1000:g} ms, "
             f"{min_r}-{max_r} regions (median {statistics.median(sizes):.0f} in the address space; "
             f"they covered {100 * min(covered):.0f}-{100 * max(covered):.0f}% of the mapping; "
             f"{retries} reads asked again)")
    return results, cpu, label


def run_mglrud(w: Workload, pats, window: float, mid: int) -> tuple[dict, float, str]:
    import lrugen

    from mglrud.model import hotness as H
    from mglrud.config import Bpf, Paths
    from mglrud.fs import FS
    from mglrud.sources.bpf_hotness import Program

    prog = Program(Bpf(), FS(Paths()))
    prog.set_targets({w.proc.pid}, set())
    first = w.addr >> SHIFT
    nreg = w.npages // 512
    results: dict[str, list[dict]] = {}
    busy = 0.0

    def measured(fn, *a):
        nonlocal busy
        c = cpu_self()
        out = fn(*a)
        busy += cpu_self() - c
        return out

    try:
        state = H.step({}, H.raw_from_dump(prog.dump()), 60.0)
        t0 = time.monotonic()
        for name, rounds in pats.items():
            for truth in rounds:
                w.touch(truth)
                # the workload holds still while the aging walks it (see toucher()); the first
                # aging clears what the previous set left young
                w.pause()
                measured(lrugen.age, mid, 0)
                w.go()
                state = measured(lambda: H.step(state, H.raw_from_dump(prog.dump()), 60.0))
                time.sleep(window)
                w.pause()
                measured(lrugen.age, mid, 0)
                w.go()
                state = measured(lambda: H.step(state, H.raw_from_dump(prog.dump()), 60.0))
                pages = [0] * nreg
                for k, s in state.items():
                    if k.tgid == w.proc.pid and 0 <= k.region - first < nreg and s.delta_pages:
                        pages[k.region - first] += s.delta_pages
                found = {r for r in range(nreg) if pages[r]}
                cold = 1 - sum(min(512, p) for p in pages) / w.npages
                results.setdefault(name, []).append(score(found, cold, truth, nreg, w.npages))
        cpu = busy / (time.monotonic() - t0)
    finally:
        prog.close()
    return results, cpu, f"mglrud BPF ({prog.event}), 2 MiB regions, one aging per round + one to start it"


def table(runs, window: float) -> list[str]:
    lines = [f"{'method':12} {'pattern':10} {'precision':>9} {'recall':>7} {'cold err pp':>11} "
             f"{'cold err pp':>11} {'CPU':>7}",
             f"{'':12} {'':10} {'':>9} {'':>7} {'(2 MiB)':>11} {'(bytes)':>11} {'(1 CPU)':>7}"]
    for short, (results, cpu, _) in runs:
        for name, rs in results.items():
            lines.append(f"{short:12} {name:10} {100 * statistics.mean(r['precision'] for r in rs):8.1f}% "
                         f"{100 * statistics.mean(r['recall'] for r in rs):6.1f}% "
                         f"{100 * statistics.mean(r['cold_region_err'] for r in rs):+11.1f} "
                         f"{100 * statistics.mean(r['cold_bytes_err'] for r in rs):+11.1f} "
                         f"{100 * cpu:6.2f}%")
    lines += ["", "methods:"] + [f"  {short}: {label}" for short, (_, _, label) in runs]
    lines.append(f"(per pattern: mean over its rounds; a round is {window:g} s of touching; CPU: share of one "
                 f"CPU over the method's whole phase, TCG guest)")
    return lines


def parse_conf(text: str) -> tuple[int, int, int, int]:
    s, a, lo, hi = (int(x) for x in text.split(":"))
    return s, a, lo, hi


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp"))
    p.add_argument("--size", type=int, default=128 << 20)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--window", type=float, default=3.0, help="seconds of touching per round")
    p.add_argument("--damon", type=parse_conf, action="append",
                   help="SAMPLE_US:AGGR_US:MIN_REGIONS:MAX_REGIONS (repeatable; default: DAMON's own "
                        "defaults 5000:100000:10:1000, then a finer 5000:1000000:100:10000)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--skip-mglrud", action="store_true", help="DAMON only")
    p.add_argument("--toucher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cgroup", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.toucher:
        return toucher(args.size, args.cgroup)

    why = not_the_test_guest()
    if why:
        print(f"damon_compare.py: refusing to touch DAMON: {why}; run it in the test guest "
              f"(kernel-patch/vm-run.sh --exec ...)", file=sys.stderr)
        return 2
    import lrugen

    CG.mkdir(exist_ok=True)
    (CG / "cgroup.subtree_control").write_text("+memory")
    (CG / "w").mkdir(exist_ok=True)
    mid = lrugen.memcg_id("/mglrud-damon/w")
    w = Workload(args.size, CG / "w")
    pats = patterns(w.npages, args.rounds, args.seed)
    out = [f"# bench/damon_compare.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: {' '.join(sys.argv)}",
           f"# kernel {os.uname().release} (TCG guest), {os.cpu_count()} CPUs; workload: {args.size >> 20} MiB "
           f"anonymous mapping, 4 KiB pages, {args.rounds} rounds per pattern; scored at 2 MiB regions"]
    runs = []
    raw: list = []
    try:
        for i, conf in enumerate(args.damon or [(5000, 100000, 10, 1000), (5000, 1000000, 100, 10000)]):
            runs.append((f"DAMON {chr(ord('a') + i)}", run_damon(w, pats, args.window, conf, raw)))
            print(f"# done: {runs[-1][1][2]}", flush=True)
        if not args.skip_mglrud:
            runs.append(("mglrud", run_mglrud(w, pats, args.window, mid)))
    finally:
        w.stop()
        (args.out / "damon_regions.json").write_text(json.dumps(raw))
    out += table(runs, args.window)
    for line in out:
        print(line, flush=True)
    (args.out / "damon_compare.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
