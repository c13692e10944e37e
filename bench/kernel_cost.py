"""What the kernel series costs MGLRU's walks: unpatched vs patched-idle vs an empty BPF program
vs mglrud's counting program on vmscan:mm_vmscan_lru_gen_young_range. VM only.

Two halves.

In the guest (`guest`), one boot of one kernel:
  kernel-patch/vm-run.sh --variant unpatched|default [--qemu-opts '-icount shift=1,sleep=off'] \\
      --out DIR --exec '/usr/bin/python3 bench/kernel_cost.py guest --out DIR --label NAME'
sets up six workloads, each a tests/vm/tp_workload.py process in a memcg of its own (pinned to
CPU 0; this process, which does the timed writes and so runs the walks, is on CPU 1):

  dense       128 MiB anon, 4 KiB pages, every page touched before each pass (32768 young, 64 tables)
  sparse      128 MiB anon, 4 KiB pages, one page per PTE table touched (64 young, 64 tables)
  thp         128 MiB anon MADV_HUGEPAGE, every page touched (64 young PMDs)
  file        64 MiB of a read-only shared file mapping, every page read (16384 young, 32 tables)
  vmas        1024 anon VMAs of 16 pages, 16-page gaps between them, every page touched
              (16384 young, 64 tables, 16 VMAs per table)
  lookaround  32 MiB of another file: fault in, age three times (the pages are then in the
              oldest generation), read every other page, and time the eviction of that
              generation ("- MEMCG 0 SEQ 0 NR" to lru_gen, swappiness 0: file only): reclaim's
              rmap finds each read page young and runs lru_gen_look_around() on its window
              (8192 pages, 4096 young)

and times passes (CLOCK_MONOTONIC around the write to /sys/kernel/debug/lru_gen, which returns
when the walk is done) for the aging workloads "+ MEMCG 0 MAX_SEQ 1 1" (can_swap, force_scan:
every PTE table of the memcg's mms is walked). The TLB of each mapping is flushed before it is
touched (tp_workload's mprotect round trip), so every touched page is young at the walk.
Configurations, on a patched kernel: off (no program: the static branch only; this is
"patched-idle"), empty (a bcc program on the range event that returns at once), counting
(mglrud's own bpf/hotness.bpf.c through its loader, mglrud.sources.bpf_program.Program, on the
range event, targets = the workloads' tgids and memcgs). On an unpatched kernel only off;
`--configs off` runs only off on a patched kernel too (all patched-idle / unpatched needs).
They run in --blocks blocks: in each, the counting program is loaded (a bcc compile), every
workload runs --passes passes with it, it is closed, then every workload runs --passes passes
off and --passes passes with the empty program. Results go to DIR/kernel_cost.json.

On the host (`summary`), over the JSON of several boots (alternate them: unpatched, patched,
unpatched, patched, ...):
  /usr/bin/python3 bench/kernel_cost.py summary DIR1 DIR2 ... > bench/results/kernel_cost.txt
(`run` does both: `run --out DIR --boots 4 --icount 1 --configs off --cache /var/cache/mglrud-v3`
boots the unpatched kernel from --unpatched-cache and the patched one from --cache, alternately.)
A label is KERNEL-CLOCK; the summary divides each by "unpatched-CLOCK" (so a guest run by hand
with --label v3-icount1 is compared with the unpatched-icount1 boots).
prints per workload and configuration the median, min and max pass time over all passes of all
boots of that kernel, ns per young entry and per table, and patched ÷ unpatched by the medians.

Under TCG the guest clock is host time, noisy with whatever else runs; with qemu's
`-icount shift=N,sleep=off` the guest clock is virtual and advances 2^N ns per guest
instruction, so a pass's time counts the instructions it executed: no host noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vm"))

PAGE = 4096
TABLE = 512  # PTEs per table (x86-64)
RANGE_EVENT = Path("/sys/kernel/tracing/events/vmscan/mm_vmscan_lru_gen_young_range")
CG_ROOT = Path("/sys/fs/cgroup/mglrud-cost")
# Files nothing else in the guest reads (the guest's root is the host's, read-only), so the
# page cache the workload faults in is charged to its memcg; /tmp is tmpfs (anon).
FILE_FILE = "/usr/lib/jvm/java-17-openjdk-amd64/lib/modules"
FILE_LOOK = "/usr/lib/jvm/temurin-25-jdk-amd64/lib/src.zip"

EMPTY = b"""
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young_range)
{
    return 0;
}
"""


class Workload:
    """A tests/vm/tp_workload.py process in memcg CG_ROOT/NAME, driven line by line."""

    def __init__(self, name: str):
        import lrugen

        self.name = name
        self.cg = CG_ROOT / name
        self.cg.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/vm/tp_workload.py"), "--cgroup", str(self.cg),
             "--node", "0", "--cpu", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self("drain")  # answers once it is in its memcg
        self.mid = lrugen.memcg_id(f"/{CG_ROOT.name}/{name}")

    def __call__(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"tp_workload {self.name}: {command!r} -> {answer}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def max_seq(mid: int) -> int:
    import lrugen

    return lrugen.read()[(mid, 0)]["gens"][-1][0]


def timed_write(text: str) -> tuple[int, str]:
    """ns of one write to lru_gen (the command runs in it), and the error if it failed."""
    import lrugen

    err = ""
    t = time.perf_counter_ns()
    try:
        with open(lrugen.LRU_GEN, "w") as f:
            f.write(text)
    except OSError as e:
        err = e.strerror or str(e)
    return time.perf_counter_ns() - t, err


class Aging:
    """A workload whose pass is: touch (TLB flushed first), then age the memcg, timed."""

    def __init__(self, name: str, maps: list[str], touches: list[str], young: int, tables: int, vmas: int,
                 fault: list[str] | None = None):
        self.w = Workload(name)
        for m in maps:
            self.w(m)
        for t in fault or touches:
            self.w(t)
        self.w("drain")
        self.touches, self.young, self.tables, self.vmas = touches, young, tables, vmas
        self.age()  # the first pass also moves the fresh folios; not counted

    def age(self) -> tuple[int, str]:
        return timed_write(f"+ {self.w.mid} 0 {max_seq(self.w.mid)} 1 1")

    def run_pass(self) -> tuple[int, str]:
        for t in self.touches:
            self.w(t)
        return self.age()


class LookAround:
    """Reclaim's rmap path: evict a generation of file pages of which every other one was read."""

    def __init__(self, npages: int):
        self.w = Workload("lookaround")
        self.npages = npages
        self.w(f"map L {0x3100_0000_0000:#x} {npages} file {FILE_LOOK}")
        self.young, self.tables, self.vmas = npages // 2, npages // TABLE, 1
        self.half = "touch L " + ",".join(str(i) for i in range(0, npages, 2))

    def run_pass(self) -> tuple[int, str]:
        mid = self.w.mid
        self.w("touch L all")  # fault the evicted half back in (into this memcg: the workload's)
        self.w("drain")
        for _ in range(3):  # the pages now sit in max_seq - 2, the oldest evictable generation
            timed_write(f"+ {mid} 0 {max_seq(mid)} 1 1")
        seq = max_seq(mid) - 2
        self.w(self.half)
        return timed_write(f"- {mid} 0 {seq} 0 {self.npages}")


def guest(args) -> int:
    os.sched_setaffinity(0, {1} if os.cpu_count() > 1 else {0})
    patched = RANGE_EVENT.is_dir()
    CG_ROOT.mkdir(exist_ok=True)
    (CG_ROOT / "cgroup.subtree_control").write_text("+memory")
    mib = 1 << 20
    n128 = 128 * mib // PAGE
    base = 0x3000_0000_0000
    vma_maps = [f"map V{i} {base + 0x6000_0000 + i * 32 * PAGE:#x} 16 anon" for i in range(1024)]
    vma_touch = [f"touch V{i} all" for i in range(1024)]
    print(f"[cost] kernel {platform.release()}, patched={patched}, label {args.label}", flush=True)
    nthp = args.thp_mib * mib // PAGE
    makers = {
        "dense": lambda: Aging("dense", [f"map D {base:#x} {n128} anon"], ["touch D all"], n128, n128 // TABLE, 1),
        "sparse": lambda: Aging("sparse", [f"map S {base + 0x1000_0000:#x} {n128} anon"],
                                ["touch S " + ",".join(str(i) for i in range(0, n128, TABLE))],
                                n128 // TABLE, n128 // TABLE, 1, fault=["touch S all"]),  # resident everywhere
        "thp": lambda: Aging("thp", [f"map T {base + 0x2000_0000:#x} {nthp} anon thp"], ["touch T all"],
                             nthp // TABLE, nthp // TABLE, 1),
        "file": lambda: Aging("file", [f"map F {base + 0x3000_0000:#x} {n128 // 2} file {FILE_FILE}"],
                              ["touch F all"], n128 // 2, n128 // 2 // TABLE, 1),
        "vmas": lambda: Aging("vmas", vma_maps, vma_touch, 1024 * 16, 64, 1024),
        "lookaround": lambda: LookAround(n128 // 4),
    }
    chosen = args.workloads.split(",")
    if not chosen or any(w not in makers for w in chosen):
        raise SystemExit(f"kernel_cost.py: --workloads {args.workloads!r}: choose from {','.join(makers)}")
    work = {}
    try:
        for name in makers:
            if name in chosen:
                work[name] = makers[name]()
        thp = 0
        if "thp" in work:
            thp = sum(int(line.split()[1]) for line in Path(f"/proc/{work['thp'].w.pid}/smaps").read_text().splitlines()
                      if line.startswith("AnonHugePages:"))
            print(f"[cost] thp workload: AnonHugePages {thp} kB of {args.thp_mib * 1024}", flush=True)

        configs = [c for c in ("off", "empty", "counting") if c in args.configs.split(",")] if patched else ["off"]
        if not configs:
            raise SystemExit(f"kernel_cost.py: --configs {args.configs!r} names none of off, empty, counting")
        times: dict[str, dict[str, list[int]]] = {w: {c: [] for c in configs} for w in work}
        errors: dict[str, dict[str, list[str]]] = {w: {c: [] for c in configs} for w in work}
        counted: dict[str, list[int]] = {}
        empty = None
        if "empty" in configs:
            from bcc import BPF

            empty = BPF(text=EMPTY)
            empty.detach_tracepoint(b"vmscan:mm_vmscan_lru_gen_young_range")

        def passes(config: str) -> None:
            for name, w in work.items():
                for _ in range(args.passes):
                    ns, err = w.run_pass()
                    times[name][config].append(ns)
                    if err:
                        errors[name][config].append(err)

        for b in range(args.blocks):
            if "counting" in configs:
                from mglrud.config import Bpf, Paths
                from mglrud.fs import FS
                from mglrud.sources.bpf_program import Program

                t = time.monotonic()
                prog = Program(Bpf(), FS(Paths()), event="mm_vmscan_lru_gen_young_range")
                prog.set_targets({w.w.pid for w in work.values()}, {w.w.mid for w in work.values()})
                print(f"[cost] block {b}: counting program loaded in {time.monotonic() - t:.0f} s", flush=True)
                passes("counting")
                d = prog.dump()
                counted.setdefault("pages", []).append(sum(c for v in d["heat"] for c, _, _ in v["percpu"]))
                prog.close()
            if "off" in configs:
                passes("off")
            if empty is not None:
                empty.attach_tracepoint(tp=b"vmscan:mm_vmscan_lru_gen_young_range",
                                        fn_name=b"tracepoint__vmscan__mm_vmscan_lru_gen_young_range")
                try:
                    passes("empty")
                finally:
                    empty.detach_tracepoint(b"vmscan:mm_vmscan_lru_gen_young_range")
            print(f"[cost] block {b}: " + "; ".join(
                f"{n} " + " ".join(f"{c}={statistics.median(t[c]) / 1e3:.0f}us" for c in configs)
                for n, t in times.items()), flush=True)
        out = {
            "label": args.label, "release": platform.release(), "patched": patched,
            "blocks": args.blocks, "passes": args.passes,
            "workloads": {n: {"young": w.young, "tables": w.tables, "vmas": w.vmas} for n, w in work.items()},
            "thp_kb": thp, "times_ns": times, "errors": errors, "counted_pages_per_block": counted,
        }
        Path(args.out, "kernel_cost.json").write_text(json.dumps(out, indent=1))
    finally:
        for w in work.values():
            w.w.stop()
        for d in sorted(CG_ROOT.glob("*/")):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    return 0


LOCK_STAT = Path("/proc/lock_stat")
LOCK_STAT_ON = Path("/proc/sys/kernel/lock_stat")
LOCK_COLUMNS = ("con-bounces", "contentions", "waittime-min", "waittime-max", "waittime-total", "waittime-avg",
                "acq-bounces", "acquisitions", "holdtime-min", "holdtime-max", "holdtime-total", "holdtime-avg")


def lock_classes(text: str, match=("ptlock", "ptl", "page_table_lock")) -> dict[str, dict[str, float]]:
    """The class lines of /proc/lock_stat (Documentation/locking/lockstat.rst) whose name has one
    of `match` in it: {class: {column: value}}; times are in microseconds."""
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.rpartition(":")
        nums = rest.split()
        if not sep or len(nums) != len(LOCK_COLUMNS) or not any(m in name for m in match):
            continue
        try:
            out[name.strip()] = dict(zip(LOCK_COLUMNS, map(float, nums)))
        except ValueError:
            continue
    return out


def ptl(args) -> int:
    """Page-table lock hold times over aging passes of the dense workload, from lock_stat
    (CONFIG_LOCK_STAT, the debug kernel): event off vs mglrud's counting program on it."""
    os.sched_setaffinity(0, {1} if os.cpu_count() > 1 else {0})
    CG_ROOT.mkdir(exist_ok=True)
    (CG_ROOT / "cgroup.subtree_control").write_text("+memory")
    n = args.mib * (1 << 20) // PAGE
    w = Aging("dense", [f"map D {0x3000_0000_0000:#x} {n} anon"], ["touch D all"], n, n // TABLE, 1)
    prog = None
    lines = [f"PTL classes in /proc/lock_stat over one aging pass of {args.mib} MiB anon, every page young "
             f"({n // TABLE} PTE tables); kernel {platform.release()}; times in us",
             f"{'config':9} {'pass':>4} {'pass us':>9} {'class':30} {'acquisitions':>12} {'contentions':>11} "
             f"{'hold min':>8} {'hold max':>9} {'hold total':>10} {'hold avg':>8}"]
    try:
        for config in ("off", "counting", "off", "counting"):
            if config == "counting":
                from mglrud.config import Bpf, Paths
                from mglrud.fs import FS
                from mglrud.sources.bpf_program import Program

                prog = Program(Bpf(), FS(Paths()), event="mm_vmscan_lru_gen_young_range")
                prog.set_targets({w.w.pid}, {w.w.mid})
            for i in range(args.passes):
                for t in w.touches:
                    w.w(t)
                LOCK_STAT.write_text("0")  # clear
                LOCK_STAT_ON.write_text("1")
                ns, err = w.age()
                LOCK_STAT_ON.write_text("0")
                classes = lock_classes(LOCK_STAT.read_text())
                if not classes:
                    lines.append(f"{config:9} {i:4d} {ns / 1e3:9.0f} (no page-table lock class in /proc/lock_stat)")
                for name, c in sorted(classes.items()):
                    lines.append(f"{config:9} {i:4d} {ns / 1e3:9.0f} {name[:30]:30} {c['acquisitions']:12.0f} "
                                 f"{c['contentions']:11.0f} {c['holdtime-min']:8.2f} {c['holdtime-max']:9.2f} "
                                 f"{c['holdtime-total']:10.1f} {c['holdtime-avg']:8.2f}" + (f" {err}" if err else ""))
            if prog:
                d = prog.dump()
                lines.append(f"# counting program saw {sum(c for v in d['heat'] for c, _, _ in v['percpu'])} pages")
                prog.close()
                prog = None
    finally:
        if prog:
            prog.close()
        w.w.stop()
        for _ in range(50):
            try:
                w.w.cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out, "ptl_hold.txt").write_text(text)
    return 0


def calibrate(args) -> int:
    """Work the series does not touch, timed the same way: what two kernels' boots differ by
    apart from the series (a pure user-space loop, a cheap syscall, a /proc read)."""
    os.sched_setaffinity(0, {1} if os.cpu_count() > 1 else {0})

    def loop():
        x = 0
        for i in range(200_000):
            x += i
        return x

    def syscalls():
        for _ in range(5000):
            os.getppid()

    def proc():
        for _ in range(300):
            Path("/proc/self/stat").read_bytes()

    out = {}
    for name, fn in (("python loop", loop), ("getppid x5000", syscalls), ("/proc/self/stat x300", proc)):
        ts = []
        for _ in range(args.passes):
            t = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t)
        out[name] = ts
        print(f"[calibrate] {platform.release()} patched={RANGE_EVENT.is_dir()} {name}: median "
              f"{statistics.median(ts) / 1e3:.1f} us, min {min(ts) / 1e3:.1f}, max {max(ts) / 1e3:.1f}", flush=True)
    Path(args.out, "calibrate.json").write_text(json.dumps({"patched": RANGE_EVENT.is_dir(), "times_ns": out}))
    return 0


def summary(args) -> int:
    runs = [json.loads(Path(d, "kernel_cost.json").read_text()) for d in args.dirs]
    order = []
    for r in runs:
        if r["label"] not in order:
            order.append(r["label"])
    print("# bench/kernel_cost.py summary " + " ".join(args.dirs))
    for label in order:
        rs = [r for r in runs if r["label"] == label]
        print(f"# {label}: {len(rs)} boot(s), {rs[0]['release']}, patched={rs[0]['patched']}, "
              f"{rs[0]['blocks']} blocks x {rs[0]['passes']} passes per configuration each")
    # labels are KERNEL-CLOCK (unpatched-icount1, patched-wall): ratios are to the unpatched
    # kernel's median with the same clock
    order.sort(key=lambda label: (label.partition("-")[2], label.startswith("patched")))

    def median_of(label: str, w: str, config: str) -> float | None:
        ts = [t for r in runs if r["label"] == label for t in r["times_ns"][w].get(config, [])]
        return statistics.median(ts) if ts else None

    work = runs[0]["workloads"]
    print(f"{'workload':11} {'kernel/config':28} {'n':>3} {'median us':>10} {'min us':>9} {'max us':>9} "
          f"{'ns/young':>9} {'ns/table':>10} {'/unpatched':>10} {'+ns/young':>9} {'+ns/table':>9}")
    for w, shape in work.items():
        for label in order:
            rs = [r for r in runs if r["label"] == label]
            base_med = median_of("unpatched-" + label.partition("-")[2], w, "off")
            for config in rs[0]["times_ns"][w]:
                ts = [t for r in rs for t in r["times_ns"][w][config]]
                errs = sum(len(r["errors"][w][config]) for r in rs)
                med = statistics.median(ts)
                # the ratio, and what the configuration adds per young entry and per table
                ratio = (f"{med / base_med:10.4f} {(med - base_med) / shape['young']:9.1f} "
                         f"{(med - base_med) / shape['tables']:9.0f}") if base_med else ""
                print(f"{w:11} {label + ' ' + config:28} {len(ts):3d} {med / 1e3:10.1f} {min(ts) / 1e3:9.1f} "
                      f"{max(ts) / 1e3:9.1f} {med / shape['young']:9.1f} {med / shape['tables']:10.0f} {ratio}"
                      + (f"  ({errs} writes failed)" if errs else ""))
    return 0


UNPATCHED_CACHE = "/var/cache/mglrud-unpatched"


def run(args) -> int:
    """Host side: boots alternating unpatched and patched (A B A B ...), one guest at a time."""
    qemu = f"-icount shift={args.icount},sleep=off" if args.icount is not None else ""
    clock = f"icount{args.icount}" if qemu else "wall"
    dirs = []
    for i in range(args.boots):
        k = (i + (args.first == "patched")) % 2
        variant = ("unpatched", "default")[k]
        label = ("unpatched", "patched")[k] + "-" + clock
        out = Path(args.out, f"{i:02d}-{label}").resolve()
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # each kernel from its own cache: kernel-patch/README.md, "Cost"
        env["MGLRUD_CACHE"] = args.unpatched_cache if variant == "unpatched" else args.cache
        cmd = [str(REPO / "kernel-patch/vm-run.sh"), "--variant", variant, "--out", str(out),
               "--timeout", str(args.timeout)]
        if qemu:
            cmd += ["--qemu-opts", qemu]
        cmd += ["--exec", f"/usr/bin/python3 bench/kernel_cost.py guest --out {out} --label {label} "
                          f"--blocks {args.blocks} --passes {args.passes} --configs {args.configs} "
                          f"--workloads {args.workloads} --thp-mib {args.thp_mib}"]
        print(f"[cost] boot {i}: {label}", flush=True)
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            print(f"kernel_cost.py: boot {i} ({label}) failed with exit status {rc}; see {out}", file=sys.stderr)
            return 1
        dirs.append(str(out))
    return summary(argparse.Namespace(dirs=dirs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("guest")
    g.add_argument("--out", required=True)
    g.add_argument("--label", required=True, help="name of this kernel/clock in the summary, e.g. unpatched-icount")
    g.add_argument("--blocks", type=int, default=2)
    g.add_argument("--passes", type=int, default=5)
    g.add_argument("--configs", default="off,empty,counting",
                   help="comma-separated configurations to run on a patched kernel (off = patched-idle)")
    g.add_argument("--workloads", default="dense,sparse,thp,file,vmas,lookaround",
                   help="comma-separated workloads to set up and time")
    g.add_argument("--thp-mib", type=int, default=128, help="size of the thp workload's mapping")
    t = sub.add_parser("ptl", help="page-table lock hold times (needs CONFIG_LOCK_STAT)")
    t.add_argument("--out", required=True)
    t.add_argument("--mib", type=int, default=64)
    t.add_argument("--passes", type=int, default=3)
    r = sub.add_parser("run", help="host side: alternate unpatched and patched boots, then summary")
    r.add_argument("--out", required=True)
    r.add_argument("--boots", type=int, default=4)
    r.add_argument("--icount", type=int, help="qemu -icount shift=N,sleep=off (guest time counts instructions)")
    r.add_argument("--blocks", type=int, default=2)
    r.add_argument("--passes", type=int, default=5)
    r.add_argument("--timeout", type=int, default=2400)
    r.add_argument("--configs", default="off,empty,counting",
                   help="configurations on the patched kernel; 'off' alone is enough for patched-idle / unpatched")
    r.add_argument("--cache", default=os.environ.get("MGLRUD_CACHE", "/var/cache/mglrud"),
                   help="MGLRUD_CACHE of the patched kernel (default: $MGLRUD_CACHE or /var/cache/mglrud)")
    r.add_argument("--unpatched-cache", default=UNPATCHED_CACHE, help="MGLRUD_CACHE of the unpatched kernel")
    r.add_argument("--workloads", default="dense,sparse,thp,file,vmas,lookaround",
                   help="comma-separated workloads to set up and time")
    r.add_argument("--thp-mib", type=int, default=128, help="size of the thp workload's mapping")
    r.add_argument("--first", choices=("unpatched", "patched"), default="unpatched",
                   help="which kernel boots first (then they alternate)")
    c = sub.add_parser("calibrate", help="time work the series does not touch (a boot's baseline)")
    c.add_argument("--out", required=True)
    c.add_argument("--passes", type=int, default=7)
    s = sub.add_parser("summary")
    s.add_argument("dirs", nargs="+")
    args = p.parse_args()
    return {"guest": guest, "ptl": ptl, "run": run, "calibrate": calibrate, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
