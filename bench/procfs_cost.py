"""Cost of the /proc source per GB of target RSS per interval.

For each size, starts tests/integration/procfs_workload.py with half of the
size in a region it rewrites once per --pause seconds (hot) and half written
once (cold), 4 KiB pages (THP off: the most page-table entries per GB, the
worst case for the walks). Then, for several intervals, times what the source
does once per target per interval:

  smaps       reading /proc/PID/smaps (page-table walk under the mmap read lock)
  numa_maps   reading /proc/PID/numa_maps (a second walk; only done on multi-node hosts)
  clear_refs  writing "1" to /proc/PID/clear_refs (a walk under the mmap WRITE lock)

and prints the median of each, divided by the process's RSS in GB (2^30 bytes).
The figures go to stdout and are appended to bench/results/procfs_cost.txt,
with the command, kernel and machine load, since they are wall-clock times on a
shared machine.

Run as root from the repository root:
  /usr/bin/python3 bench/procfs_cost.py [--sizes 256M,1G,4G] [--intervals 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mglrud.config import Paths  # noqa: E402
from mglrud.fs import FS  # noqa: E402
from mglrud.sources import procfs, smaps  # noqa: E402

WORKLOAD = REPO / "tests" / "integration" / "procfs_workload.py"
GB = 1 << 30


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(total: int, intervals: int, pause: float) -> dict:
    fs = FS(Paths())
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, str(WORKLOAD), "--size", str(total // 2), "--pause", str(pause),
                                 "--passes", str(Path(tmp, "passes")), "--seconds", "900"],
                                stdout=subprocess.PIPE, text=True)
        try:
            info = json.loads(proc.stdout.readline())
            pid = info["pid"]
            procfs._clear_refs(fs, pid, procfs.start_time(fs, pid))  # the first interval starts here
            rows = []
            for _ in range(intervals):
                time.sleep(pause * 1.5)  # let the hot half be rewritten once
                t_smaps, text = timed(lambda: (fs.proc(pid, "smaps")).read_text())
                t_numa, _ = timed(lambda: (fs.proc(pid, "numa_maps")).read_text())
                t_clear, _ = timed(lambda: procfs._clear_refs(fs, pid, procfs.start_time(fs, pid)))
                entries = smaps.parse_smaps(text)
                rss = sum(e.rss for e in entries)
                ref = sum(e.referenced for e in entries)
                rows.append((t_smaps, t_numa, t_clear, rss, ref))
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # our own child, by its pid
            proc.wait()
    med = {k: statistics.median(r[i] for r in rows) for i, k in enumerate(("smaps", "numa_maps", "clear_refs"))}
    rss = statistics.median(r[3] for r in rows)
    return {"rss": rss, "referenced": statistics.median(r[4] for r in rows), **med}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256M,1G,4G", help="target RSS per run, comma-separated")
    p.add_argument("--intervals", type=int, default=7)
    p.add_argument("--pause", type=float, default=1.0, help="seconds between the workload's hot passes")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "procfs_cost.txt"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root: clear_refs of another process needs it", file=sys.stderr)
        return 1

    lines = [
        f"# bench/procfs_cost.py — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"# command: {sys.executable} bench/procfs_cost.py {' '.join(sys.argv[1:])}".rstrip(),
        f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine: wall-clock times)",
        f"# target: half its RSS rewritten every {args.pause:g}s, half written once; 4 KiB pages (THP off)",
        f"# median of {args.intervals} intervals; ms = per read, ms/GB = divided by the target's RSS in GiB",
        "",
        f"{'RSS':>8} {'refd':>5} | {'smaps ms':>9} {'ms/GB':>7} | {'numa_maps ms':>12} {'ms/GB':>7} | "
        f"{'clear_refs ms':>13} {'ms/GB':>7} | {'total ms/GB':>11} {'(1 node)':>9}",
    ]
    print("\n".join(lines), flush=True)
    for s in args.sizes.split(","):
        r = measure(size(s), args.intervals, args.pause)
        gb = r["rss"] / GB
        per = {k: r[k] * 1000 / gb for k in ("smaps", "numa_maps", "clear_refs")}
        row = (f"{r['rss'] / (1 << 20):>6.0f}Mi {r['referenced'] / r['rss']:>5.0%} | "
               f"{r['smaps'] * 1000:>9.1f} {per['smaps']:>7.1f} | "
               f"{r['numa_maps'] * 1000:>12.1f} {per['numa_maps']:>7.1f} | "
               f"{r['clear_refs'] * 1000:>13.1f} {per['clear_refs']:>7.1f} | "
               f"{sum(per.values()):>11.1f} {per['smaps'] + per['clear_refs']:>9.1f}")
        print(row, flush=True)
        lines.append(row)
    lines += ["", "# total = smaps + numa_maps + clear_refs (multi-node hosts); (1 node) = smaps + clear_refs,",
              "# what mglrud does on a single-node host, where it skips numa_maps."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Appended: runs on a shared machine differ, and each run's figures stay with its load average.
    with out.open("a") as f:
        f.write(("\n" if out.stat().st_size else "") + "\n".join(lines) + "\n")
    print(f"\nappended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
