"""Scrape load: many concurrent scrapers against one mglrud on 127.0.0.1.

Starts `mglrud run` as a subprocess against a copy of a fixture root captured
in the 6.12 guest (tests/fixtures/roots, `aging.dry_run`: nothing is written;
the host has no MGLRU), aging and publishing every second, then runs
--scrapers threads that each GET /metrics back to back (one keep-alive-less
HTTP/1.0 request at a time, as Prometheus does per target) for --seconds.

Prints requests, errors (non-200, short or failed responses), throughput, and
latency p50/p90/p99/max; writes the same to bench/results/scrape_load.txt.
The clients run in this process, on the same 2 CPUs as the daemon: the
latencies include client-side queueing, so they are an upper bound.

  /usr/bin/python3 bench/scrape_load.py [--scrapers 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.daemonproc import DaemonProc, NotServing, fixture_flags  # noqa: E402

WAIT = 120.0

CONFIG = """
aging: {interval: 1s, dry_run: true}
snapshot: {interval: 1s}
metrics: {cold_thresholds: [1s, 2s]}
targets: [{name: all, memcg: "/**"}]
log: {level: warning}
"""


def start_daemon(tmp: Path) -> DaemonProc:
    roots = sorted(p.parent.parent for p in (REPO / "tests/fixtures").glob("roots/*/debugfs/lru_gen"))
    if not roots:
        raise SystemExit("no fixture root in tests/fixtures/roots")
    root = tmp / "root"
    shutil.copytree(roots[-1], root)  # the 2-node capture: more series
    (tmp / "mglrud.yaml").write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:  # log.level is warning: no "serving" line, so readiness is /metrics answering on PORT
        return DaemonProc.start(["-c", str(tmp / "mglrud.yaml"), "--listen.port", str(port), *fixture_flags(root)],
                                tmp / "mglrud.log", port=port, wait=WAIT)
    except NotServing as e:
        raise SystemExit(str(e)) from None


def get(port: int, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        if r.getheader("Content-Length") and int(r.getheader("Content-Length")) != len(body):
            return -1, body
        return r.status, body
    finally:
        conn.close()


def run(scrapers: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="mglrud-scrape-") as tmp:
        daemon = start_daemon(Path(tmp))
        proc, port = daemon.proc, daemon.port
        try:
            _, body = get(port)
            series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
            latencies: list[list[float]] = [[] for _ in range(scrapers)]
            errors: list[str] = []
            stop = threading.Event()
            go = threading.Barrier(scrapers + 1)

            def scraper(i: int) -> None:
                go.wait()
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        status, body = get(port)
                        ok = status == 200 and b"mglrud_build_info" in body
                        if not ok:
                            errors.append(f"status {status}, {len(body)} bytes")
                    except OSError as e:
                        errors.append(f"{type(e).__name__}: {e}")
                        continue
                    latencies[i].append(time.perf_counter() - t0)

            threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(scrapers)]
            for t in threads:
                t.start()
            rss0 = rss_kib(proc.pid)
            go.wait()
            t0 = time.monotonic()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join(timeout=WAIT)
            elapsed = time.monotonic() - t0
            alive = proc.poll() is None
            rss1 = rss_kib(proc.pid) if alive else 0
            # The loop kept publishing under load: the snapshot is young.
            _, body = get(port)
            age = next((float(line.split()[-1]) for line in body.decode().splitlines()
                        if line.startswith("mglrud_snapshot_age_seconds ")), float("nan"))
        finally:
            rc = daemon.stop(wait=WAIT)
            text = daemon.log_text()
            tracebacks = text.count("Traceback")
            first_traceback = text[text.find("Traceback"):][:1500] if tracebacks else ""
    lat = sorted(x for per in latencies for x in per)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

    return {"scrapers": scrapers, "seconds": elapsed, "requests": len(lat), "errors": len(errors),
            "first_errors": errors[:5], "rps": len(lat) / elapsed, "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "max": lat[-1] * 1000 if lat else float("nan"), "mean": statistics.fmean(lat) * 1000 if lat else 0,
            "series": series, "bytes": len(body), "alive": alive, "rc": rc, "tracebacks": tracebacks,
            "rss_kib": (rss0, rss1), "snapshot_age": age, "first_traceback": first_traceback}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def report(r: dict, command: str) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [f"# bench/scrape_load.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
           f"# command: {command}",
           f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average at end {load} "
           f"(clients and daemon share the CPUs: latencies include client queueing)",
           f"# daemon: fixture root vm-2node, aging and snapshot every 1s (dry run); /metrics = "
           f"{r['series']} series, {r['bytes']} bytes",
           "",
           f"scrapers {r['scrapers']}  seconds {r['seconds']:.1f}  requests {r['requests']}  errors {r['errors']}  "
           f"throughput {r['rps']:.1f}/s",
           f"latency ms: p50 {r['p50']:.1f}  p90 {r['p90']:.1f}  p99 {r['p99']:.1f}  max {r['max']:.1f}  "
           f"mean {r['mean']:.1f}",
           f"daemon: alive {'yes' if r['alive'] else 'NO'}, exit {r['rc']} on SIGTERM, tracebacks {r['tracebacks']}, "
           f"VmRSS {r['rss_kib'][0]} -> {r['rss_kib'][1]} KiB, snapshot age after the load {r['snapshot_age']:.1f}s",
           ]
    for e in r["first_errors"]:
        out.append(f"# error: {e}")
    for line in r["first_traceback"].splitlines()[-6:]:
        out.append(f"# daemon traceback: {line}")
    ok = r["errors"] == 0 and r["alive"] and r["rc"] == 0 and not r["tracebacks"]
    out += ["", f"# goal: no errors: {'met' if ok else 'NOT MET'}"]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrapers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scrape_load.txt"))
    args = ap.parse_args()
    r = run(args.scrapers, args.seconds)
    text = report(r, " ".join(["/usr/bin/python3", "bench/scrape_load.py", *sys.argv[1:]]))
    sys.stdout.write(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0 if "NOT MET" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
