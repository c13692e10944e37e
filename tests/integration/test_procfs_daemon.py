"""End to end on a kernel without MGLRU: `mglrud run` with no targets serves /proc data on /metrics.

mglrud runs in a new PID namespace (`unshare --pid --fork --mount-proc`) next
to the hot/cold workload, so its default targets -- the largest processes by
RSS -- are the workload and nothing else on this machine: the test never
clears the accessed bits of processes it did not start. The test stops mglrud
by its pid (`--kill-child=SIGTERM` covers a test that dies first), and the
namespace's other processes die with it.
"""

import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemonproc import DaemonProc

WORKLOAD = Path(__file__).with_name("procfs_workload.py")
SIZE = 64 << 20

CONFIG = """
aging: {interval: 2s}
snapshot: {interval: 1s}
metrics: {cold_thresholds: [2s, 4s]}
procfs: {clear_refs: true}  # explicitly: the test measures accessed bytes (off by default)
"""

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a PID namespace and clear_refs"),
    pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)"),
    pytest.mark.skipif(Path("/sys/kernel/mm/lru_gen/enabled").exists(),
                       reason="this kernel has MGLRU: `sources: auto` would not pick /proc"),
]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams, name, **labels):
    fam = fams.get(name)
    return [s for s in (fam.samples if fam else ()) if all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture
def daemon(tmp_path):
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(CONFIG)
    inner = (f"{sys.executable} {WORKLOAD} --size {SIZE} --seconds 600 > {tmp_path}/workload.json & "
             f"exec {sys.executable} -m mglrud run -c {cfg} --listen.port 0 --listen.socket {tmp_path}/run/m.sock")
    # mglrud is the namespace's init: when it exits, the kernel kills the workload with it.
    d = DaemonProc.start([], tmp_path / "mglrud.log", wrapper=[
        "unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "sh", "-c", inner])
    try:
        yield d.port, tmp_path, d
    finally:
        d.stop()


def test_default_targets_serve_hot_and_cold_mappings(daemon):
    port, tmp_path, d = daemon
    deadline = time.monotonic() + 180
    while True:
        fams = scrape(port)
        # The workload is the one process in the namespace besides mglrud; its comm depends on the python used.
        accessed = samples(fams, "mglrud_mapping_accessed_bytes", target="all", mapping="[anon]")
        if accessed:
            break
        assert time.monotonic() < deadline, "no accessed bytes after many cycles:\n" + d.log_text()
        time.sleep(0.5)

    up = {s.labels["source"]: s.value for s in samples(fams, "mglrud_source_up")}
    assert up == {"lru_gen": 0, "procfs": 1}
    # Only the workload: mglrud never reads itself, and nothing else lives in its namespace.
    assert [s.value for s in samples(fams, "mglrud_target_processes", target="all")] == [1]
    resident = sum(s.value for s in samples(fams, "mglrud_mapping_resident_bytes", target="all", mapping="[anon]"))
    assert resident >= 2 * SIZE  # the hot and the cold region, both [anon]
    # The hot region was rewritten all interval long, the cold one not at all.
    [a] = accessed
    assert 0.9 * SIZE <= a.value <= 1.25 * SIZE, a
    [cold] = samples(fams, "mglrud_mapping_cold_bytes", target="all", mapping="[anon]", lru="anon", threshold="2.0")
    assert cold.value >= 0.9 * SIZE

    # the addresses are on the socket (root's); TCP without authentication redacts them
    from mglrud.client import _get_unix
    snap = json.loads(_get_unix(f"{tmp_path}/run/m.sock", 10))
    info = json.loads((tmp_path / "workload.json").read_text())
    [p] = snap["procfs"]["processes"]
    by_start = {int(m["start"], 16): m for m in p["mappings"]}
    hot, cold_m = by_start[info["hot"][0]], by_start[info["cold"][0]]
    assert hot["accessed_bytes"] >= 0.9 * SIZE and cold_m["accessed_bytes"] <= 0.01 * SIZE
