"""The demo's load generator (demo/load.py) against a real memcached on 127.0.0.1 (Debian's package).

The fill's ground truth (which 2 MiB regions each batch of keys went to, from memcached's
pagemap) must cover the key range in order, and the reads must stay inside the read range
with most of them around its middle: the VM test of issue 20 and `make demo` compare the
heat against these. memcached listens on 127.0.0.1 with a port picked here and is stopped by
its pid.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
import load  # noqa: E402

KEYS = 4000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def memcached():
    exe = shutil.which("memcached")
    assert exe, "memcached missing: scripts/install-deps test installs it"
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    p = subprocess.Popen([exe, *user, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-t", "1"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, "memcached did not listen"
                time.sleep(0.1)
        yield p, port
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_fill_records_where_the_keys_went_in_order_and_reads_stay_in_their_range(memcached):
    proc, port = memcached
    if os.geteuid() != 0:
        pytest.fail("needs root to read memcached's pagemap (run as make test does)")
    res = load.fill(port, KEYS, 1024, proc.pid)
    slabs = {int(r, 16): v for r, v in res["regions"].items() if v["pages"] >= 64}
    # ~4000 x 1184-byte chunks: about 4.5 MiB of slab pages, in 2 MiB regions
    assert 2 <= len(slabs) <= 5, res["regions"]
    assert sum(v["pages"] for v in slabs.values()) * 4096 >= KEYS * 1024
    assert all(v["pages"] <= 512 for v in res["regions"].values())
    # the keys follow the address space in one direction (slab pages are mmapped one after the other)
    order = [r for r, _ in sorted(slabs.items(), key=lambda kv: kv[1]["keys"][0])]
    assert order == sorted(order) or order == sorted(order, reverse=True), slabs
    regions = res["regions"].values()
    assert min(v["keys"][0] for v in regions) == 0 and max(v["keys"][1] for v in regions) == KEYS

    r = load.reads(port, KEYS, 0.8, 0.1, 2.0)
    counts = {int(k): n for k, n in r["counts"].items()}
    assert r["hits"] == r["gets"] > 500, r["gets"]
    assert min(counts) >= 0.2 * KEYS  # the first 20 % are never read
    mid = sum(n for k, n in counts.items() if abs(k - r["mu"]) <= r["sigma"])
    assert mid / sum(counts.values()) > 0.6  # ~68 % within one sigma
