"""Issue 14's stock-kernel tier: the BPF source on Debian's own kernel, without mglrud's patch.

Runs in a guest booted on Debian's linux-image-6.1.*-amd64 as shipped
(`kernel-patch/vm-run.sh --variant stock -- -m stock`, `make test-vm-stock`); the
program attaches as fexit to ptep_test_and_clear_young()/pmdp_test_and_clear_young()
(docs/stock-kernel.md).

- The hot-block test of test_bpf_hotness.py, through `mglrud run` over HTTP: exactly
  the hot block's 2 MiB regions hot, anon, node 0, with residency.
- Under memcg reclaim (a file mapping twice its cgroup's memory.max, read in a loop):
  reclaim's harvests show up as harvester="reclaim", and the target's heat (accessed
  bytes) is exactly the aging's harvests, the documented choice.
- MGLRU off, as the kernel boots: `mglrud check` says how to switch it on, and
  `mglrud run` (sources: auto, no lru_gen.enable) serves the /proc source's data and
  leaves it off.

MGLRU is compiled in but off on this kernel; the probe test switches it on (the daemon
never does unless configured to) and back off after.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import test_bpf_hotness as bh
from test_bpf_hotness import daemons, samples  # noqa: F401 (daemons is a fixture)
from tests.daemonproc import DaemonProc

pytestmark = pytest.mark.stock
ENABLED = Path("/sys/kernel/mm/lru_gen/enabled")
TRACEPOINT = Path("/sys/kernel/tracing/events/vmscan/mm_vmscan_lru_gen_young")
LIFE = 3600  # seconds the probe test's workloads run: longer than the daemon's start may take (bh.WAIT)


@pytest.fixture(autouse=True)
def stock_kernel():
    assert not TRACEPOINT.exists(), f"{TRACEPOINT} exists: run the stock tier on Debian's kernel (--variant stock)"


@pytest.fixture
def stock_mglru(monkeypatch):
    """MGLRU on for the test."""
    before = ENABLED.read_text().strip()
    ENABLED.write_text("y")
    # bcc compiles against the full kernel headers here: ~1 min under an idle TCG guest, over 10 on a host shared by four guests
    monkeypatch.setattr(bh, "WAIT", 1800)
    yield
    ENABLED.write_text("n" if int(before, 16) == 0 else "y")


def attached(text: str) -> str:
    return ",".join(lab["event"] for lab, v in samples(text, "mglrud_bpf_program_attached") if v == 1)


def harvested(text: str) -> dict[str, float]:
    return {lab["harvester"]: v for lab, v in samples(text, "mglrud_bpf_harvested_bytes_total")}


def test_mglru_off_is_left_off(memcgs, workloads, tmp_path):
    """As Debian boots it: check says how to switch MGLRU on; the daemon serves /proc data without doing so."""
    assert int(ENABLED.read_text(), 16) == 0, ENABLED.read_text()
    cfg = tmp_path / "mglrud.yaml"
    w = workloads("--size", "16M", cgroup=memcgs("stock-off"))
    cfg.write_text(f"targets: [{{name: mglruoff, pid: {w.pid}}}]\nsnapshot: {{interval: 1s}}\n")
    check = subprocess.run([sys.executable, "-m", "mglrud", "check", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(bh.REPO)})
    print(check.stdout)
    assert check.returncode == 1, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    row = {tuple(line.split()[:2]): line for line in lines if len(line.split()) > 2}
    assert "MGLRU is off; set lru_gen.enable: true in the config, or echo y > " in row["lru_gen", "enabled"]
    assert "MGLRU is compiled in but off" in row["lru_gen", "no"] and ("procfs", "used") in row, check.stdout
    # the BPF row names the mode the probe would attach in, without compiling (nothing to count yet)
    assert "MGLRU is off" in row["bpf", "program"] and "fexit on ptep_test_and_clear_young" in row["bpf", "program"]
    d = DaemonProc.start(["-c", str(cfg), "--listen.port", "0"], tmp_path / "mglrud.log", wait=600)
    try:
        text = d.wait_metrics(lambda t: any(lab["target"] == "mglruoff" and v >= 16 << 20 for lab, v in
                                            samples(t, "mglrud_mapping_resident_bytes")), "the workload's mapping")
    finally:
        d.stop()
    up = {lab["source"]: v for lab, v in samples(text, "mglrud_source_up")}
    chosen = {lab["source"]: v for lab, v in samples(text, "mglrud_source_chosen")}
    # a source neither chosen nor named in `sources:` has no series (bpf here)
    assert up["procfs"] == 1 and chosen["lru_gen"] == 0 and not chosen.get("bpf"), (up, chosen)
    assert int(ENABLED.read_text(), 16) == 0, "mglrud switched MGLRU on"


def test_probe_through_the_daemon(stock_mglru, memcgs, workloads, daemons, tmp_path):
    """One daemon (bcc compiles for minutes in a busy TCG guest), two targets: the hot block,
    and a file mapping read in a loop in a cgroup whose memory.max is half of it."""
    size, hot = 64 << 20, 16 << 20
    # --seconds: the workloads outlive bcc's compile against the full headers (10-15 min in a busy
    # guest); by default they stop after 600 s, and a target whose process is gone has no mapped
    # spans, so its heat buckets cover no address (this tier's first hot-block failure)
    life = ("--seconds", str(LIFE))
    w = workloads("--size", f"{size >> 20}M", "--hot", f"{hot >> 20}M", *life, cgroup=memcgs("stock-hot"))
    fd = os.open(bh.FILE, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    cg = memcgs("stock-reclaim")
    (cg / "memory.max").write_text(str(24 << 20))
    fsize = 48 << 20
    squeezed = workloads("--size", f"{fsize >> 20}M", "--hot", f"{fsize >> 20}M", "--file", bh.FILE, "--readonly",
                         *life, cgroup=cg)
    d = daemons(tmp_path, f"[{{name: hotblock, pid: {w.pid}}}, {{name: squeezed, pid: {squeezed.pid}}}]")

    bh.check_hot_block(d, w, size, hot)
    text = d.wait_metrics(lambda t: harvested(t).get("reclaim", 0) > 0, "reclaim harvests", every=2.0)
    text = d.wait_agings(1, "one more aging")
    assert attached(text) == "fexit", attached(text)
    h = harvested(text)
    acc = sum(v for lab, v in samples(text, "mglrud_target_accessed_bytes_total"))
    print(f"harvested {h}, targets' accessed bytes {acc}; {cg.name} memory.events: "
          f"{(cg / 'memory.events').read_text().split()}")
    assert h["reclaim"] > 0 and h["aging"] > 0, h
    # heat counts the aging's harvests only: the targets' accessed bytes are those, to the byte
    assert acc == h["aging"], (acc, h)

