"""`make demo`, inside the test guest: memcached in its own memcg, `mglrud run` with the BPF
source on it, the demo's load (demo/load.py), the live heatmap, a PNG and what it shows.

Run by scripts/demo through kernel-patch/vm-run.sh --exec (root, debugfs, tracefs and cgroup2
mounted; the host's filesystem read-only, OUT writable). The guest has no terminal of its own
(vm-run.sh streams what it prints), so the live view is the heatmap's text frames
(mglrud/render/heatmap.py frame/text, the same cells as the TUI), printed once per aggregation
interval. The PNG is drawn from the whole run's history by mglrud/render/png.py, the renderer of
`mglrud heatmap --png`. Everything the closing lines say comes from the daemon's /snapshot.json
(per aging pass: `passes`, each region's `found_in`) and from where the fill put the keys
(demo/load.py reads memcached's pagemap after each batch).

Phases: memcached alone (what it touches on its own), the fill (keys in order), memcached
alone again, the reads (normal around the middle of the read range; the rest never read).
With --fill-before-daemon the fill runs before mglrud starts and the memcg is aged twice
(clearing the fill's accessed bits), so that `mglrud report` can say which regions were never
accessed since: the ground-truth test (tests/vm/test_memcached_vm.py) runs it that way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mglrud import client  # noqa: E402
from mglrud.render import heatmap as HM  # noqa: E402
from mglrud.snapshot_json import from_dict  # noqa: E402
from mglrud.tui.feeds import History  # noqa: E402

CGROUP = Path("/sys/fs/cgroup/mglrud-demo")
LRU_GEN = Path("/sys/kernel/debug/lru_gen")
SERVING = re.compile(r"serving https?://127\.0\.0\.1:(\d+)/")
REGION = 2 << 20


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def get_json(url: str) -> dict:
    """The daemon's whole /snapshot.json through its unix socket (url unix:PATH, mglrud/client.py):
    only there, or to an authenticated TCP client, are addresses and BPF regions served
    (mglrud/redact.py); plain TCP gives a redacted document with no regions."""
    doc = client.fetch_json(url, timeout=30)
    if doc.get("redacted"):
        raise client.FetchError(f"{url} served the redacted snapshot (no BPF regions): the demo reads the "
                                f"daemon's root-only socket")
    return doc


def memcg_id(path: str) -> int:
    memcg = None
    for line in LRU_GEN.read_text().splitlines():
        w = line.split()
        if w and w[0] == "memcg" and len(w) > 2 and w[2] == path and int(w[1]) != 0:
            memcg = int(w[1])
    if memcg is None:
        raise SystemExit(f"demo: {path} not in {LRU_GEN}")
    return memcg


def age_memcg(path: str) -> None:
    """One aging pass of every node of the memcg (the '+ id node max_seq 1 1' command)."""
    mid, node, seqs = memcg_id(path), None, {}
    cur = None
    for line in LRU_GEN.read_text().splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "memcg":
            cur = int(w[1])
        elif w[0] == "node" and cur == mid:
            node = int(w[1])
        elif cur == mid and node is not None and w[0].isdigit():
            seqs[node] = int(w[0])
    for node, seq in seqs.items():
        with open(LRU_GEN, "w") as f:
            f.write(f"+ {mid} {node} {seq} 1 1")


class Viewer(threading.Thread):
    """Polls /snapshot.json every second into a History (the TUI's) and prints a text frame
    each time an aggregation interval ends."""

    def __init__(self, base: str, pid: int, aggregate: float, width: int, height: int):
        super().__init__(daemon=True)
        self.base, self.pid, self.aggregate = base, pid, aggregate
        self.width, self.height = width, height
        self.history = History(None, pid)
        self.stop = threading.Event()
        self.phase = "starting"
        self.last: dict | None = None  # the newest document, for the closing numbers
        self.lock = threading.Lock()

    def run(self) -> None:
        last_frame = time.time() // self.aggregate
        while not self.stop.is_set():
            try:
                doc = get_json(self.base)
                with self.lock:  # History re-reads /proc/PID/maps when a region is new (new slab pages)
                    if self.history.add(doc):
                        self.last = doc
            except client.FetchError as e:
                say(f"snapshot: {e}")
            now = time.time() // self.aggregate
            if now != last_frame:
                last_frame = now
                self.print_frame()
            self.stop.wait(1.0)

    def grid(self, since: float | None = None) -> HM.Grid:
        with self.lock:
            return self.history.grid(since)

    def print_frame(self) -> None:
        f = HM.frame(self.grid(), HM.View(aggregate=self.aggregate), self.width, self.height)
        print(f"--- mglrud heatmap --pid {self.pid} | phase: {self.phase} | {time.strftime('%H:%M:%S')} ---")
        print(HM.text(f), end="", flush=True)


def start_memcached(port: int, memory_mb: int, extra: list[str]) -> subprocess.Popen:
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "cgroup.subtree_control").write_text("+memory")
    cg = CGROUP / "memcached"
    cg.mkdir(exist_ok=True)
    procs = cg / "cgroup.procs"

    def enter():  # in the child, before exec: memcached starts in its own memcg, on CPU 0
        procs.write_text(str(os.getpid()))
        os.sched_setaffinity(0, {0})

    m = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                          "-m", str(memory_mb), "-t", "1", *extra], preexec_fn=enter)
    deadline = time.monotonic() + 60
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return m
        except OSError:
            if m.poll() is not None:
                raise SystemExit(f"demo: memcached exited {m.returncode}")
            time.sleep(0.2)
    m.kill()
    raise SystemExit("demo: memcached did not listen within 60 s")


def start_daemon(out: Path, pid: int, a) -> tuple[subprocess.Popen, str]:
    """`mglrud run` on memcached; returns it and the URL of its full view, unix:SOCKET. The socket
    is in a fresh directory of mode 0700 under the guest's /tmp (the OUT directory is the host's,
    shared over 9p, no place for a socket); TCP (port 0) still serves the redacted view."""
    sock = Path(tempfile.mkdtemp(prefix="mglrud-demo-")) / "mglrud.sock"
    cfg = out / "mglrud-demo.yaml"
    cfg.write_text(f"""# written by demo/guest.py
sources: [bpf, lru_gen]
listen: {{socket: {sock}}}
aging: {{interval: {a.aging:g}s}}
snapshot: {{interval: {a.snapshot:g}s}}
metrics: {{cold_thresholds: [{a.aging * 2:g}s]}}
bpf: {{half_life: {a.aging * 2:g}s}}
targets: [{{name: memcached, pid: {pid}}}]
""")
    log = open(out / "mglrud.log", "w")
    d = subprocess.Popen([sys.executable, "-m", "mglrud", "run", "-c", str(cfg), "--listen.port", "0"], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    # bcc compiles for ~15-50 s under TCG on an idle machine; minutes when the host is busy
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        text = (out / "mglrud.log").read_text(errors="replace")
        if SERVING.search(text):  # logged after the socket is bound, or after a warning that it cannot be
            if f"on unix:{sock}" not in text:
                d.terminate()
                raise SystemExit(f"demo: mglrud does not serve on {sock}:\n{text[-3000:]}")
            base = f"unix:{sock}"
            break
        if d.poll() is not None:
            raise SystemExit(f"demo: mglrud exited {d.returncode}:\n{(out / 'mglrud.log').read_text()[-3000:]}")
        time.sleep(0.5)
    else:
        d.terminate()
        raise SystemExit("demo: mglrud did not serve within 900 s")
    # until the BPF source is up and a measured pass exists (the first pass seen is not measured)
    while time.monotonic() < deadline:
        try:
            doc = get_json(base)
        except client.FetchError as e:
            d.terminate()
            raise SystemExit(f"demo: {e}") from None
        up = {s["name"]: s["up"] for s in doc["sources"]}
        passes = (doc.get("hotness") or {}).get("passes") or []
        if up.get("bpf") and any(p["measured"] for p in passes):
            return d, base
        if d.poll() is not None or (doc.get("hotness") is None and "bpf" in up and not up["bpf"]):
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in doc["sources"] if not s["up"])
            raise SystemExit(f"demo: the BPF source is not up ({reasons})")
        time.sleep(1)
    d.terminate()
    raise SystemExit("demo: no measured aging pass within 900 s")


def run_load(phase: str, a, out: Path, pid: int | None = None) -> dict:
    res = out / f"load-{phase}.json"
    argv = [sys.executable, str(REPO / "demo" / "load.py"), phase, "--port", str(a.port), "--keys", str(a.keys),
            "--value-size", str(a.value_size), "--read-fraction", str(a.read_fraction), "--sigma", str(a.sigma),
            "--read-seconds", str(a.read_seconds), "--fill-seconds", str(a.fill_seconds), "--out", str(res)]
    if pid:
        argv += ["--pid", str(pid)]
    # On memcached's CPU: under TCG, QEMU's software TLB keeps a translation until the vCPU
    # switches address space, so a page the aging walk cleared the accessed bit of is not
    # marked accessed again while memcached stays alone on its vCPU (a real TLB is small
    # enough to lose it); the client on the same vCPU switches it at every request.
    subprocess.run(argv, check=True, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    return json.loads(res.read_text())


# ---------------------------------------------------------------- what the picture shows

def pass_heats(columns, lo: float, hi: float) -> dict[int, list[float]]:
    """Per region start: the heat of every measured aging pass that ran in [lo, hi), from the
    History's columns (render/heatmap.py columns(): a snapshot's own column has no heat for
    BPF rows, a pass's column has what the pass found)."""
    out: dict[int, list[float]] = {}
    for t, cells in columns:
        if lo <= t < hi:
            for k, c in cells.items():
                if c.heat is not None:
                    out.setdefault(k.start, []).append(c.heat)
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def expected_reads(fill: dict, counts: dict[int, int]) -> dict[int, float]:
    """Per region start: the gets its keys had, per key: each slab page it holds a part of
    counts with the share of the page's bytes in the region (the ground truth of demo/load.py)."""
    out = {}
    for r, v in fill["regions"].items():
        r = int(r, 16)
        got = held = 0.0
        for lo, hi, klo, khi in v["slab_pages"]:
            lo, hi = int(lo, 16), int(hi, 16)
            share = (min(hi, r + REGION) - max(lo, r)) / (hi - lo)
            got += share * sum(counts.get(k, 0) for k in range(klo, khi))
            held += share * (khi - klo)
        out[r] = got / held if held else 0.0
    return out


def summarize(fill: dict, reads: dict, columns, last: dict, pid: int, idle: tuple[float, float] | None,
              aging: float) -> dict:
    """The closing numbers: per region of slab pages, mean heat over the read phase's aging
    passes, against the gets its keys had (the ground truth): the most-read region, the
    least-read one (of those holding read keys), those holding only never-read keys."""
    regions = {int(r, 16): v for r, v in fill["regions"].items() if v["pages"] >= 64}  # slab pages, not stray ones
    counts = {int(k): n for k, n in reads["counts"].items()}
    per_key = expected_reads(fill, counts)
    during = pass_heats(columns, reads["read_start"], reads["read_end"] + aging)
    cells = from_dict(last).regions(pid=pid)

    def heat(rs):
        return mean(mean(during.get(r, [0.0])) for r in rs)

    first_read = reads["never_read_keys"]
    # regions of read keys only (not sharing a slab page with never-read keys), most gets first
    read = sorted((r for r in regions if regions[r]["keys"][0] >= first_read), key=lambda r: -per_key[r])
    never = sorted(r for r in regions if regions[r]["keys"][1] <= first_read)
    hot, cold = read[:1], read[-1:] if len(read) > 1 else []
    s = {"regions": len(regions), "filled_bytes": sum(regions[r]["pages"] for r in regions) * 4096,
         "span": [min(regions, default=0), max(regions, default=0) + REGION],
         "keys_of": {f"{r:#x}": regions[r]["keys"] for r in sorted(regions)},
         "gets_per_key": {f"{r:#x}": round(per_key[r], 2) for r in sorted(regions)},
         "heat": {f"{r:#x}": round(heat([r]), 3) for r in sorted(regions)},
         "hot": hot, "least_read": cold, "never_read": never,
         "heat_hot": heat(hot), "heat_least_read": heat(cold), "heat_never_read": heat(never),
         "passes_in_reads": max((len(v) for v in during.values()), default=0),
         "never_read_found": sorted(r for r in never if any(h > 0 for h in during.get(r, []))),
         "idle_seconds_never_read": [next((c.idle_seconds for c in cells.get((pid, r), []) if c.lru == "anon"), None)
                                     for r in never],
         "gets": reads["gets"], "read_keys": reads["read_keys"], "never_read_keys": reads["never_read_keys"],
         "mu": reads["mu"], "sigma": reads["sigma"], "keys": fill["keys"]}
    s["ratio"] = s["heat_hot"] / s["heat_least_read"] if s["heat_least_read"] else float("inf")
    if idle is not None:
        alone = pass_heats(columns, *idle)
        s["alone_slab_regions_found"] = sorted(r for r in regions if any(h > 0 for h in alone.get(r, [])))
        s["alone_other_regions_found"] = sorted(r for r, hs in alone.items() if r not in regions and any(hs))
        s["alone_passes"] = max((len(v) for v in alone.values()), default=0)
    return s


def describe(s: dict) -> str:
    def span(rs):
        return f"{min(rs):#x}-{max(rs) + REGION:#x}" if rs else "none"

    def one(rs):
        return f"{rs[0]:#x} (keys {s['keys_of'][f'{rs[0]:#x}'][0]}..{s['keys_of'][f'{rs[0]:#x}'][1] - 1}, " \
               f"{s['gets_per_key'][f'{rs[0]:#x}']} gets per key)" if rs else "none"

    lines = [
        f"filled: keys 0..{s['keys'] - 1} in {s['regions']} regions of 2 MiB ({s['filled_bytes'] >> 20} MiB of slab "
        f"pages), {span(list(range(s['span'][0], s['span'][1], REGION)))}; memcached maps each new slab page below "
        f"the previous one, so key 0 is at the top address",
        f"hot band: reads ~N({s['mu']:.0f}, {s['sigma']:.0f}) of keys {s['never_read_keys']}..{s['keys'] - 1}; "
        f"most-read region {one(s['hot'])}: mean heat {s['heat_hot']:.2f} per aging pass (share of the region "
        f"found accessed)",
        f"least read: {one(s['least_read'])}: mean heat {s['heat_least_read']:.2f}; most / least read = "
        f"{s['ratio']:.1f}x over {s['passes_in_reads']} passes",
        f"never read: keys 0..{s['never_read_keys'] - 1}, wholly in {len(s['never_read'])} regions "
        f"{span(s['never_read'])}: mean heat {s['heat_never_read']:.2f}; found accessed during the reads: "
        f"{', '.join(hex(r) for r in s['never_read_found']) or 'none'}" if s["never_read"] else
        f"never read: keys 0..{s['never_read_keys'] - 1}, wholly in no region (each of theirs holds read keys "
        f"too: a 2 MiB region holds about {REGION // (s['filled_bytes'] // s['keys'])} keys; a smaller "
        f"--read-fraction leaves more never read)",
    ]
    if "alone_passes" in s:
        lines.append(f"memcached alone ({s['alone_passes']} passes, no client): "
                     f"{', '.join(hex(r) for r in s['alone_slab_regions_found']) or 'no'} slab region(s) and "
                     f"{len(s['alone_other_regions_found'])} others (text, libraries, stacks, arenas) found accessed")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for heatmap.png, summary.json, logs (the host's)")
    p.add_argument("--keys", type=int, default=30000)
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--read-fraction", type=float, default=0.8)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--fill-seconds", type=float, default=20.0, help="pace the fill to last at least this long")
    p.add_argument("--read-seconds", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=15.0, help="memcached alone before the fill and the reads")
    p.add_argument("--aging", type=float, default=5.0, help="aging interval, seconds")
    p.add_argument("--snapshot", type=float, default=1.0, help="snapshot interval, seconds")
    p.add_argument("--aggregate", type=float, default=5.0, help="seconds per heatmap column")
    p.add_argument("--port", type=int, default=11311)
    p.add_argument("--memcached-opts", default="", help="more memcached options, e.g. '-o no_lru_crawler'")
    p.add_argument("--fill-before-daemon", action="store_true",
                   help="fill, then age the memcg twice, before mglrud starts (so `mglrud report` can say "
                        "what was never accessed since)")
    p.add_argument("--width", type=int, default=110)
    p.add_argument("--height", type=int, default=36)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    value_mb = a.keys * (a.value_size + 100) >> 20
    m = start_memcached(a.port, max(64, 2 * value_mb), a.memcached_opts.split())
    say(f"memcached pid {m.pid} in {CGROUP / 'memcached'}, port {a.port}")
    d = viewer = None
    try:
        fill = None
        if a.fill_before_daemon:
            say(f"fill before mglrud: {a.keys} keys of {a.value_size} B")
            fill = run_load("fill", a, out, m.pid)
            for _ in range(2):
                age_memcg("/mglrud-demo/memcached")
        say("starting mglrud run (BPF source compiling: ~15-50 s under TCG)")
        d, base = start_daemon(out, m.pid, a)
        say(f"mglrud serving {base}; live heatmap below, one frame per {a.aggregate:g} s column")
        viewer = Viewer(base, m.pid, a.aggregate, a.width, a.height)
        viewer.start()
        t0 = time.time()
        viewer.phase = "memcached alone"
        time.sleep(a.idle_seconds)
        idle = (t0, time.time())
        if fill is None:
            viewer.phase = "fill"
            fill = run_load("fill", a, out, m.pid)
            viewer.phase = "memcached alone after the fill"
            time.sleep(a.idle_seconds)
        viewer.phase = "reads"
        reads = run_load("read", a, out)
        viewer.phase = "after the reads"
        time.sleep(a.aging + 2 * a.snapshot + 1)  # the pass after the reads, and a snapshot listing it
        viewer.stop.set()
        viewer.join(timeout=30)
        viewer.print_frame()
        (out / "snapshot.json").write_text(json.dumps(viewer.last))
        r = subprocess.run([sys.executable, "-m", "mglrud", "report", "--pid", str(m.pid), "--url", base],
                           cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        (out / "report.txt").write_text(r.stdout + r.stderr)
        from mglrud.render import png
        g = viewer.grid(t0 - a.aggregate)
        drawn = png.draw(g, HM.View(aggregate=a.aggregate),
                         f"mglrud heatmap: memcached (pid {m.pid}), {a.keys} keys x {a.value_size} B, "
                         f"aging {a.aging:g}s, {a.aggregate:g}s columns")
        drawn.image.save(out / "heatmap.png", format="PNG", pnginfo=drawn.pnginfo())
        s = summarize(fill, reads, list(viewer.history.columns), viewer.last, m.pid, idle, a.aging)
        s["phases"] = {"start": t0, "idle": list(idle), "fill": [fill["fill_start"], fill["fill_end"]],
                       "reads": [reads["read_start"], reads["read_end"]]}
        (out / "summary.json").write_text(json.dumps(s, indent=1))
        say(f"wrote {out / 'heatmap.png'} ({len(drawn.bands)} rows x {drawn.columns} columns), summary.json, "
            f"report.txt")
        print(describe(s), flush=True)
        return 0
    finally:
        if viewer is not None:
            viewer.stop.set()
        if d is not None and d.poll() is None:
            d.terminate()
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
        m.terminate()
        m.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
