"""Render once per snapshot vs render every scrape: one ~10k-series /metrics, both ways, in one run.

The snapshot is SYNTHETIC: --memcgs memcgs (default 160, about 10k series as in issue 19) on
2 nodes with 4 generations each, printed in the kernel's lru_gen format (tests/unit/synth.py)
and read by the real lru_gen source and Engine (dry run). Then, interleaved, median of --runs:

- render: client_python's generate_latest over build_registry (what every scrape did before)
  vs mglrud.exposition's body from its cache (what a scrape of an already rendered snapshot does);
- GET /metrics over 127.0.0.1 from mglrud's HTTP server, with the cache bypassed (every scrape
  renders; the "before") and with it (the "after"), plain and with Accept-Encoding: gzip;
- the first scrape of a new snapshot (the one that renders it) with the cache.

Prints the table and writes it to bench/results/scrape_cache.txt. Run on the project's 2-CPU
machine, shared with other work: ratios within one run are what count.

  /usr/bin/python3 bench/scrape_cache.py [--memcgs 160] [--runs 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client as httpclient
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))
from synth import lru_gen_text  # noqa: E402

from prometheus_client import generate_latest  # noqa: E402

from mglrud import exposition, http  # noqa: E402
from mglrud.collectors import Published, build_registry  # noqa: E402
from mglrud.config import loads  # noqa: E402
from mglrud.cycle import Engine  # noqa: E402
from mglrud.fs import RecordingWriter  # noqa: E402

CONFIG = """
aging: {interval: 1m, dry_run: true}
targets: [{name: all, memcg: "/**"}]
"""


def big_snapshot(tmp: Path, memcgs: int):
    rows = []
    for i in range(memcgs):
        path = f"/system.slice/service-{i:04d}.service" if i % 2 else f"/kubepods.slice/pod-{i:04d}/ctr"
        nodes = [(n, [(10 + g, 1000 * (4 - g) + i, 100 * g + i + n, 50 * g + i) for g in range(4)]) for n in (0, 1)]
        rows.append((i + 2, path, nodes))
    (tmp / "debugfs").mkdir()
    (tmp / "debugfs" / "lru_gen").write_text(lru_gen_text(rows))
    cfg = loads(CONFIG + f"paths: {{debugfs: '{tmp / 'debugfs'}', procfs: '{tmp / 'proc'}', "
                         f"sysfs: '{tmp / 'sys'}', cgroupfs: '{tmp / 'cgroup'}'}}\n")
    return Engine(cfg, writer=RecordingWriter()).cycle(age=False)


def bare_server(body: bytes) -> tuple[socket.socket, threading.Thread]:
    """The floor: a socket that answers every connection with BODY's bytes, nothing rendered or parsed."""
    head = (f"HTTP/1.0 200 OK\r\nContent-Type: {exposition.TEXT}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def loop():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            with c:
                c.recv(65536)
                c.sendall(head + body)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return sock, t


class Uncached(exposition.RenderCache):
    """The "before": every scrape renders the snapshot."""

    def get(self, snapshot, openmetrics, deflated=False):
        body = self._render(snapshot, openmetrics)
        return exposition._deflate(body, False) if deflated else body


def get(port: int, gzip: bool = False) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, r.status
    finally:
        conn.close()
    return time.perf_counter() - t0, len(body)


def ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def run(memcgs: int, runs: int) -> tuple[list[str], dict]:
    with tempfile.TemporaryDirectory(prefix="mglrud-scrape-cache-") as tmp:
        snap = big_snapshot(Path(tmp), memcgs)
    published = Published(snap)
    wall = lambda: snap.taken_at + 1.0  # noqa: E731 - one age for both, so the bytes compare
    registry = build_registry(published, wall=wall)
    exp = exposition.Exposition(published, wall=wall)
    text = generate_latest(registry)
    body, _ = exp.metrics()
    assert body == text, "the cached body differs from generate_latest's"
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))

    before_srv, _ = http.serve("127.0.0.1", 0, published, exposition=exposition.Exposition(published))
    before_srv.site.exposition.cache = Uncached()
    after_srv, _ = http.serve("127.0.0.1", 0, published, exposition=exp)
    bare, _ = bare_server(body)
    t: dict[str, list[float]] = {k: [] for k in ("render", "cached", "first", "get_before", "get_after",
                                                 "get_before_gz", "get_after_gz", "get_bare")}
    sizes = {}
    try:
        for i in range(runs):  # interleaved, so load changes hit both sides alike
            t0 = time.perf_counter()
            generate_latest(registry)
            t["render"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            exp.metrics()
            t["cached"].append(time.perf_counter() - t0)
            fresh = dataclasses.replace(snap, taken_at=snap.taken_at + i + 1)  # a new snapshot: renders once
            e2 = exposition.Exposition(Published(fresh))
            t0 = time.perf_counter()
            e2.metrics()
            t["first"].append(time.perf_counter() - t0)
            for key, port, gz in (("get_bare", bare.getsockname()[1], False),
                                  ("get_before", before_srv.server_port, False),
                                  ("get_after", after_srv.server_port, False),
                                  ("get_before_gz", before_srv.server_port, True),
                                  ("get_after_gz", after_srv.server_port, True)):
                dt, n = get(port, gz)
                t[key].append(dt)
                sizes[key] = n
    finally:
        for s in (before_srv, after_srv):
            s.shutdown()
            s.server_close()
        bare.close()
    m = {k: ms(v) for k, v in t.items()}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# bench/scrape_cache.py — {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"# command: /usr/bin/python3 bench/scrape_cache.py --memcgs {memcgs} --runs {runs}",
        f"# kernel {platform.release()}, {os.cpu_count()} CPUs, load average at end {load}",
        f"# SYNTHETIC snapshot: {memcgs} memcgs x 2 nodes x 4 generations (kernel lru_gen format, real parser); "
        f"/metrics = {series} series, {len(text)} bytes ({sizes['get_after_gz']} gzipped); median of {runs}, interleaved",
        "",
        "| what | before: render every scrape | after: render once per snapshot | ratio |",
        "|---|---|---|---|",
        f"| body, in process (generate_latest vs cache) | {m['render']:.1f} ms | {m['cached']:.2f} ms | "
        f"{m['render'] / m['cached']:.0f}x |",
        f"| GET /metrics on 127.0.0.1 | {m['get_before']:.1f} ms | {m['get_after']:.1f} ms | "
        f"{m['get_before'] / m['get_after']:.1f}x |",
        f"| GET /metrics, Accept-Encoding: gzip | {m['get_before_gz']:.1f} ms | {m['get_after_gz']:.1f} ms | "
        f"{m['get_before_gz'] / m['get_after_gz']:.1f}x |",
        f"| first scrape of a new snapshot (renders it; in process) | — | {m['first']:.1f} ms | |",
        f"| the floor: the same bytes from a bare socket (no HTTP parsing, no rendering) | | {m['get_bare']:.1f} ms | |",
        "",
        "before = mglrud's HTTP server with the cache bypassed (every scrape renders, as before this change);",
        "after = the same server serving the cached bytes; per-scrape families (build info, snapshot age)",
        "are rendered on every scrape in both.",
    ]
    return lines, m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memcgs", type=int, default=160)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "scrape_cache.txt"))
    args = p.parse_args(argv)
    lines, _ = run(args.memcgs, args.runs)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
