"""Issue 3's VM test: `mglrud run` in the guest, a hot and a cold memcg, scraped over HTTP.

One process touches all of its memory in a loop (hot), one touched its memory
once and sleeps (cold). After several aging intervals the cold memcg's cold
bytes at the smallest threshold must be >= 90 % of its resident anon bytes,
and the hot memcg's <= 10 %.

Runs inside the guest (kernel-patch/vm-run.sh -- -k test_daemon_vm); skipped elsewhere.
"""

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc

REPO = Path(__file__).resolve().parents[2]
WAIT = 300  # seconds; TCG is slow

# Touches one byte per page with a strided slice assignment, so a whole pass runs
# at C speed (well inside one aging interval even under TCG).
TOUCHER = r"""
import mmap, os, sys, time
cgroup, size, hot = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hot"
with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
page = os.sysconf("SC_PAGE_SIZE")
buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
n, value = size // page, 1
buf[::page] = bytes([value]) * n
print("ready", flush=True)
while True:
    if hot:
        value = value % 255 + 1
        buf[::page] = bytes([value]) * n
        time.sleep(0.1)
    else:
        time.sleep(1)
"""

HOT_BYTES = 128 << 20
COLD_BYTES = 64 << 20
INTERVAL = 2  # seconds between agings of each memcg
THRESHOLDS = ("3s", "5s")  # the smallest must exceed one interval: see the lower-bound rule in mglrud/model/lru_gen.py


def _start(cgroup: Path, size: int, kind: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", TOUCHER, str(cgroup), str(size), kind],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"{kind} toucher did not start: {line!r}")
    return p


def _samples(text: str, name: str) -> list[tuple[dict, float]]:
    out = []
    for line in text.splitlines():
        m = re.fullmatch(name + r"\{(.*)\} (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
    return out


def _sum(text: str, name: str, **want) -> float:
    return sum(v for labels, v in _samples(text, name) if all(labels.get(k) == w for k, w in want.items()))


def test_daemon_hot_and_cold_memcgs(memcgs, tmp_path):
    hot_cg, cold_cg = memcgs("hot"), memcgs("cold")
    procs = [_start(hot_cg, HOT_BYTES, "hot"), _start(cold_cg, COLD_BYTES, "cold")]
    config = tmp_path / "mglrud.yaml"
    config.write_text(f"""
aging: {{interval: {INTERVAL}s}}
snapshot: {{interval: 1s}}
metrics: {{cold_thresholds: [{", ".join(THRESHOLDS)}]}}
targets: [{{name: test, memcg: "/mglrud-test/*"}}]
log: {{level: debug}}
""")
    daemon = DaemonProc.start(["-c", str(config), "--listen.port", "0"], tmp_path / "mglrud.log", wait=WAIT)
    try:
        deadline = time.monotonic() + WAIT
        base = daemon.base

        def scrape() -> str:
            with urllib.request.urlopen(base + "/metrics", timeout=60) as r:
                return r.read().decode()

        # Ready when both memcgs show the kernel's 4 generations and each was aged
        # at least 5 times (the count is per memcg and node).
        nodes = 1
        text = ""
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            text = scrape()
            ages = _samples(text, "mglrud_memcg_generation_age_seconds")
            nodes = max(1, len({lab["numa_node"] for lab, _ in ages}))
            full = all(any(lab["memcg"] == f"/mglrud-test/{n}" and lab["gen"] == "3" for lab, _ in ages)
                       for n in ("hot", "cold"))
            m = re.search(r"^mglrud_aging_runs_total (\S+)$", text, re.M)
            runs = float(m.group(1)) if m else 0.0
            if full and runs >= 2 * nodes * 5:
                break
            time.sleep(1)
        else:
            pytest.fail(f"never got 4 generations and 5 agings per memcg:\n{text}\n{daemon.log_text()}")

        text = scrape()
        smallest = f"{float(THRESHOLDS[0].rstrip('s')):.1f}"
        result = {}
        for name in ("hot", "cold"):
            memcg = f"/mglrud-test/{name}"
            resident = _sum(text, "mglrud_memcg_resident_bytes", memcg=memcg, lru="anon")
            cold = _sum(text, "mglrud_memcg_cold_bytes", memcg=memcg, lru="anon", threshold=smallest)
            result[name] = (cold, resident)
        report = (f"hot: cold {result['hot'][0] / 2**20:.1f} MiB of {result['hot'][1] / 2**20:.1f} MiB anon; "
                  f"cold: cold {result['cold'][0] / 2**20:.1f} MiB of {result['cold'][1] / 2**20:.1f} MiB anon")
        print(report)
        assert result["cold"][1] >= COLD_BYTES * 0.9, report
        assert result["hot"][1] >= HOT_BYTES * 0.9, report
        assert result["cold"][0] >= 0.9 * result["cold"][1], f"{report}\n{text}"
        assert result["hot"][0] <= 0.1 * result["hot"][1], f"{report}\n{text}"
        errors = _samples(text, "mglrud_aging_errors_total")
        assert all(v == 0 for _, v in errors), errors
    finally:
        daemon.stop()
        for p in procs:
            p.kill()
            p.wait(timeout=60)


def test_check_passes_on_the_patched_kernel():
    p = subprocess.run([sys.executable, "-m", "mglrud", "check"], cwd=REPO, capture_output=True, text=True, errors="replace",
                       timeout=WAIT)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {line.split("  ")[0]: line for line in p.stdout.splitlines()[1:8]}
    for name in ("lru_gen enabled", "debugfs lru_gen readable", "debugfs lru_gen writable", "tracepoint lru_gen"):
        assert rows[name].split()[len(name.split())] == "ok", p.stdout
    assert "no-op aging write" in rows["debugfs lru_gen writable"]


def test_snapshot_ages_once_per_node(tmp_path):
    """`mglrud snapshot` ages each target memcg once on every node: max_seq + 1, exactly."""
    import json
    config = tmp_path / "root.yaml"
    config.write_text('targets: [{memcg: "/"}]\n')

    def snap(*flags):
        p = subprocess.run([sys.executable, "-m", "mglrud", "snapshot", "--json", "-c", str(config), *flags],
                           cwd=REPO, capture_output=True, text=True, errors="replace", timeout=WAIT)
        assert p.returncode == 0, p.stderr
        return {m["node"]: m["generations"][0]["seq"] for m in json.loads(p.stdout)["memcgs"]}

    before = snap("--no-age")
    after = snap()
    assert before and after == {node: seq + 1 for node, seq in before.items()}
