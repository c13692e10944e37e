"""Churn: targets that come and go for as long as mglrud runs.

Runs `mglrud run` as a subprocess on 127.0.0.1 and, while it ages and is
scraped, makes targets appear and disappear N times:

  procfs   N short-lived processes (/bin/sleep under a unique argv[0]) matched by a
           cmdline target, read by the /proc source on the host's real /proc
           (smaps, clear_refs of those processes only);
  lru_gen  N memcgs appearing in and vanishing from a SYNTHETIC debugfs lru_gen file
           (tests/unit/synth.py formats) with `aging.dry_run`: the host has no MGLRU.

It reports the daemon's RSS (VmRSS) after a warm-up (the first 10% of the
churn) and at the end, its peak, how many series /metrics had at most, and
whether any series of a target or memcg that is gone was still there one
interval after the last one went (it must not be). Figures go to stdout and
to bench/results/churn.txt.

Run from the repository root (root only for --mode procfs on others' processes; not needed here):
  /usr/bin/python3 bench/churn.py [--cycles 1000] [--mode both|procfs|lru_gen]
tests/integration/test_churn.py runs a smaller version of the same code.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from synth import lru_gen_text  # noqa: E402

PY = "/usr/bin/python3"
# A series of one mapping of the churning target (labels come sorted in the text format).
CHURN_MAPPING = re.compile(r'^(?=.*\bmapping=")(?=.*\btarget="churn").*')
INTERVAL = 1.0  # aging.interval = the /proc source's read interval; also snapshot.interval
WAIT = 120.0


@dataclass
class Result:
    mode: str
    cycles: int
    seconds: float = 0.0
    rss_start_kib: int = 0  # after the warm-up
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    scrapes: int = 0
    scrape_errors: int = 0
    max_series: int = 0
    max_churn_series: int = 0  # series of churning targets/memcgs in one scrape
    stale_after_gone: list[str] = field(default_factory=list)
    alive: bool = True

    @property
    def growth_kib(self) -> int:
        return self.rss_end_kib - self.rss_start_kib


class Daemon:
    def __init__(self, workdir: Path, config: str, flags: list[str]):
        self.config = workdir / "mglrud.yaml"
        self.config.write_text(config)
        self.log = workdir / "mglrud.log"
        with socket.socket() as s:  # a free port; log.level is warning, so no "serving" line to read it from
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([PY, "-m", "mglrud", "run", "--config", str(self.config),
                                          "--listen.port", str(port), *flags],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                self.scrape()
                return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"mglrud exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("mglrud did not start serving")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def scrape(self) -> list[str]:
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            return [line for line in r.read().decode().splitlines() if line and not line.startswith("#")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=WAIT)
        return self.proc.returncode


class Watcher(threading.Thread):
    """Scrapes and samples RSS every 0.2 s while the churn runs."""

    def __init__(self, daemon: Daemon, result: Result, churn_series: re.Pattern):
        super().__init__(daemon=True)
        self.d, self.r, self.pattern = daemon, result, churn_series
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                lines = self.d.scrape()
                self.r.scrapes += 1
                self.r.max_series = max(self.r.max_series, len(lines))
                self.r.max_churn_series = max(self.r.max_churn_series,
                                              sum(1 for line in lines if self.pattern.search(line)))
            except OSError:
                self.r.scrape_errors += 1
            try:
                self.r.rss_peak_kib = max(self.r.rss_peak_kib, self.d.rss_kib())
            except OSError:
                pass
            self.done.wait(0.2)


def _settle_and_check(d: Daemon, r: Result, gone: re.Pattern) -> None:
    """One interval after the last target went (plus a snapshot to render it): no series of it."""
    time.sleep(2 * INTERVAL + 0.5)
    r.stale_after_gone = [line for line in d.scrape() if gone.search(line)]
    r.alive = d.proc.poll() is None


def churn_procfs(cycles: int, concurrency: int = 40, life: tuple[float, float] = (0.3, 2.5),
                 seed: int = 1) -> Result:
    token = f"mglrud-churn-{os.getpid()}"
    config = f"""
sources: [procfs]
aging: {{interval: {INTERVAL}s}}
snapshot: {{interval: {INTERVAL}s}}
metrics: {{cold_thresholds: [1s, 2s]}}
targets: [{{name: churn, cmdline: "^{token} "}}]
procfs: {{max_processes: 5, top_mappings: 5, clear_refs: true}}
log: {{level: warning}}
"""
    rnd = random.Random(seed)
    r = Result("procfs", cycles)
    with tempfile.TemporaryDirectory(prefix="mglrud-churn-") as tmp:
        d = Daemon(Path(tmp), config, [])
        watcher = Watcher(d, r, CHURN_MAPPING)
        live: list[tuple[float, subprocess.Popen]] = []
        started = 0
        t0 = time.monotonic()
        watcher.start()
        try:
            while started < cycles or live:
                now = time.monotonic()
                for end, p in list(live):
                    if now >= end:
                        p.kill()
                        p.wait(timeout=WAIT)
                        live.remove((end, p))
                while started < cycles and len(live) < concurrency:
                    p = subprocess.Popen([token, str(life[1] * 4)], executable="/bin/sleep")
                    live.append((now + rnd.uniform(*life), p))
                    started += 1
                    if started == cycles // 10:
                        r.rss_start_kib = d.rss_kib()
                time.sleep(0.01)
            r.seconds = time.monotonic() - t0
            r.rss_end_kib = d.rss_kib()
            watcher.done.set()
            watcher.join(timeout=WAIT)
            _settle_and_check(d, r, CHURN_MAPPING)
            r.stale_after_gone += [line for line in d.scrape()
                                   if line.startswith('mglrud_target_processes{target="churn"}')
                                   and not line.endswith(" 0.0")]
        finally:
            for _, p in live:
                p.kill()
                p.wait(timeout=WAIT)
            d.stop()
    return r


def churn_lru_gen(cycles: int, concurrency: int = 40, period: float = 0.02) -> Result:
    config = f"""
sources: [lru_gen]
aging: {{interval: {INTERVAL}s, dry_run: true}}
snapshot: {{interval: {INTERVAL}s}}
metrics: {{cold_thresholds: [1s, 2s]}}
targets: [{{name: churn, memcg: "/churn/*"}}, {{name: root, memcg: "/"}}]
log: {{level: warning}}
"""
    r = Result("lru_gen", cycles)
    with tempfile.TemporaryDirectory(prefix="mglrud-churn-") as tmp:
        root = Path(tmp) / "root"
        (root / "debugfs").mkdir(parents=True)
        lru_gen = root / "debugfs" / "lru_gen"
        seq = [100]

        def write(live: list[int]) -> None:
            seq[0] += 1
            memcgs = [(1, "/", [(0, [(seq[0], 9000, 100, 200), (seq[0] + 1, 100, 1, 2)])])]
            # Ids are reused by the kernel: a small id space makes a new memcg take an old one's id.
            memcgs += [(2 + i % 500, f"/churn/m{i}", [(0, [(5, 4000, 64 + i % 7, 8), (6, 10, 1, 0)])]) for i in live]
            tmpf = lru_gen.with_name("lru_gen.tmp")
            tmpf.write_text(lru_gen_text(memcgs))
            os.replace(tmpf, lru_gen)  # the daemon never reads half a file

        write([])
        flags = [f"--path.{k}={root / v}" for k, v in (("procfs", "proc"), ("sysfs", "sys"), ("debugfs", "debugfs"),
                                                       ("cgroupfs", "cgroup"), ("tracefs", "tracing"))]
        d = Daemon(Path(tmp), config, flags)
        watcher = Watcher(d, r, re.compile(r'memcg="/churn/'))
        live: list[int] = []
        t0 = time.monotonic()
        watcher.start()
        try:
            for i in range(cycles):
                live.append(i)
                if len(live) > concurrency:
                    live.pop(0)
                write(live)
                if i + 1 == cycles // 10:
                    r.rss_start_kib = d.rss_kib()
                time.sleep(period)
            write([])
            r.seconds = time.monotonic() - t0
            r.rss_end_kib = d.rss_kib()
            watcher.done.set()
            watcher.join(timeout=WAIT)
            _settle_and_check(d, r, re.compile(r'memcg="/churn/'))
        finally:
            d.stop()
    return r


def report(results: list[Result], command: str) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [f"# bench/churn.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: {command}",
           f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average at end {load}",
           f"# aging and snapshot interval {INTERVAL:g}s; RSS = the daemon's VmRSS; start = after the first 10%",
           "",
           "   mode  cycles  seconds | RSS start   end  peak  growth (KiB) | scrapes errors  max series (churn) "
           "| stale after gone | alive"]
    for r in results:
        out.append(f"{r.mode:>7} {r.cycles:7d} {r.seconds:8.1f} | {r.rss_start_kib:9d} {r.rss_end_kib:5d} "
                   f"{r.rss_peak_kib:5d} {r.growth_kib:7d}      | {r.scrapes:7d} {r.scrape_errors:6d} "
                   f"{r.max_series:11d} ({r.max_churn_series:4d}) | {len(r.stale_after_gone):16d} | "
                   f"{'yes' if r.alive else 'NO'}")
    verdict = all(r.growth_kib <= 5 * 1024 and not r.stale_after_gone and r.alive and not r.scrape_errors
                  for r in results)
    out += ["", f"# goal: growth <= 5 MiB, no stale series one interval after the last target went, "
                f"no scrape errors: {'met' if verdict else 'NOT MET'}"]
    for r in results:
        for line in r.stale_after_gone[:5]:
            out.append(f"# stale ({r.mode}): {line}")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--mode", choices=("both", "procfs", "lru_gen"), default="both")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "churn.txt"))
    args = ap.parse_args()
    results = []
    if args.mode in ("both", "lru_gen"):
        results.append(churn_lru_gen(args.cycles))
    if args.mode in ("both", "procfs"):
        results.append(churn_procfs(args.cycles))
    text = report(results, " ".join(["/usr/bin/python3", "bench/churn.py", *sys.argv[1:]]))
    sys.stdout.write(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0 if "goal: " in text and "NOT MET" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
