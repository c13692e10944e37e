"""The BPF hotness source replaying the map dumps captured in the test guest (tests/fixtures/bpf).

bcc and the patched kernel exist only in the VM; this runs the real source, snapshot,
collectors and HTTP server on the host with ReplayProgram standing in for bcc.

As a module: ReplayProgram, fixture_proc() and replayed_snapshot() for unit tests.
As a script: serve that snapshot on 127.0.0.1 for a Prometheus to scrape (the Grafana
heat dashboard's e2e test); it prints `serving http://127.0.0.1:PORT/metrics` and
stays up until SIGTERM or --seconds.

    /usr/bin/python3 tests/bpf_replay.py --port 0 --seconds 600
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mglrud.collectors import Published  # noqa: E402
from mglrud.config import Paths, loads  # noqa: E402
from mglrud.fs import FS  # noqa: E402
from mglrud.http import serve  # noqa: E402
from mglrud.model import Snapshot  # noqa: E402
from mglrud.sources import bpf_hotness  # noqa: E402

BPF = REPO / "tests" / "fixtures" / "bpf"
DUMPS = [json.loads((BPF / f"dump-{i}.json").read_text()) for i in range(4)]
META = DUMPS[0]["meta"]["workload"]
PAGE = 4096
CONFIG = ("bpf: {half_life: 10s, heat_buckets: 16}\nmetrics: {cold_thresholds: [1s, 2s]}\n"
          "aging: {interval: 2s}\ntargets: [{name: w, pid: %d}, {name: m, memcg: /mglrud-capture}]" % META["pid"])


class ReplayProgram:
    """Stands in for bcc: replays the captured dumps, records target and delete calls."""

    def __init__(self, cfg, fs):
        self.dumps = list(DUMPS)
        self.targets, self.deleted, self.compile_seconds = [], [], 0.0

    def set_targets(self, tgids, memcg_ids):
        self.targets.append((set(tgids), set(memcg_ids)))

    def dump(self):
        return self.dumps.pop(0)

    def delete(self, keys):
        self.deleted += list(keys)

    def close(self):
        pass


def fixture_proc(tmp: Path) -> FS:
    """A /proc with the captured workload's smaps and cmdline (pagemap not readable: not resident-scanned)."""
    d = tmp / "proc" / str(META["pid"])
    d.mkdir(parents=True)
    (d / "smaps").write_text((BPF / "smaps").read_text())
    (d / "comm").write_text("python3\n")
    (d / "cmdline").write_bytes(b"python3\0workload.py\0")
    (d / "cgroup").write_text("0::/mglrud-capture\n")
    (tmp / "proc" / "zoneinfo").write_text((BPF / "zoneinfo").read_text())
    return FS(Paths(procfs=str(tmp / "proc")))


def replayed_snapshot(tmp: Path, config: str = CONFIG, taken_at: float = 1.8e9):
    """(Snapshot, HotnessData) after the source read all four dumps; targets `w` (the pid) and `m` (its memcg)."""
    cfg = loads(config)
    src = bpf_hotness.BpfHotnessSource(cfg.bpf, fixture_proc(tmp), loader=ReplayProgram)
    src.start()
    for _ in DUMPS:
        data = src.cycle(cfg.targets, {"/mglrud-capture": META["memcg_id"]})
    snap = Snapshot(taken_at=taken_at, page_size=PAGE, cold_thresholds=cfg.metrics.cold_thresholds,
                    idle_age_buckets=cfg.metrics.buckets, sources=(src.status(),), hotness=data)
    return snap, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long (a bound for tests)")
    p.add_argument("--web-config", default="", help="an exporter-toolkit web config file (TLS, basic auth)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mglrud-bpf-replay-") as tmp:
        snap, _ = replayed_snapshot(Path(tmp), taken_at=time.time())
    published = Published(snap)
    web = None
    if args.web_config:
        from mglrud import webconfig

        web = webconfig.WebConfigSource(args.web_config, webconfig.load(args.web_config))
    server, _ = serve("127.0.0.1", args.port, published, web=web)
    print(f"serving http://127.0.0.1:{server.server_port}/metrics", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + args.seconds
    while not stop.is_set() and time.monotonic() < deadline:
        # The snapshot stays the capture's; only its age is kept small, as a live daemon's is.
        published.publish(dataclasses.replace(snap, taken_at=time.time()))
        stop.wait(1.0)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
