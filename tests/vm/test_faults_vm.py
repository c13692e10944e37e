"""Issue 7's faults for real, on the patched kernel: the daemon keeps serving, says what is wrong
(mglrud_source_up, mglrud_aging_errors_total, the log) and recovers when the fault clears.

- debugfs not mounted (mglrud in a mount namespace where it is unmounted), then mounted there;
- the kernel's ERANGE: aging with force_scan off on a memcg that already has MAX_NR_GENS
  generations (mm/vmscan.c run_aging()), then a reload with force_scan on;
- a target memcg removed while aged, then made again (a new memcg id);
- not root: /sys/kernel/debug is 0700, so lru_gen is down with the reason eperm.

The seam tests (tests/unit/test_faults.py) cover what the kernel will not do on
demand: EINVAL for a memcg that went away between the read and the write, EPERM on
the write, a process exiting mid-read. Runs inside the guest; skipped elsewhere.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.daemonproc import DaemonProc, metric_value

WAIT = 180


def config(memcg: str, *, force_scan: bool = True, sources: str = "[lru_gen]") -> str:
    return f"""
sources: {sources}
aging: {{interval: 1s, force_scan: {str(force_scan).lower()}}}
snapshot: {{interval: 1s}}
metrics: {{cold_thresholds: [1s]}}
targets: [{{name: t, memcg: "{memcg}"}}]
log: {{level: info}}
"""


def errors(text: str, reason: str) -> float:
    return metric_value(text, f'mglrud_aging_errors_total{{reason="{reason}"}}') or 0.0


def test_debugfs_unmounted_then_mounted(tmp_path):
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(config("/"))
    # mglrud is the namespace's only process: unshare execs sh, which execs mglrud.
    inner = f"umount /sys/kernel/debug && exec {sys.executable} -m mglrud run -c {cfg} --listen.port 0"
    d = DaemonProc.start([], tmp_path / "mglrud.log", wait=WAIT, forks=False,
                         wrapper=["unshare", "--mount", "--propagation", "private", "sh", "-c", inner])
    try:
        down = d.get("/metrics")
        assert metric_value(down, 'mglrud_source_up{source="lru_gen"}') == 0.0, down
        assert "mount debugfs" in d.log_text()
        pid = d.daemon_pid()
        subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", "-t", "debugfs", "none", "/sys/kernel/debug"],
                       check=True, timeout=60)
        up = d.wait_metrics(lambda t: metric_value(t, 'mglrud_source_up{source="lru_gen"}') == 1.0
                        and (metric_value(t, "mglrud_aging_runs_total") or 0) >= 1,
                        "lru_gen did not come back after debugfs was mounted")
        assert metric_value(up, "mglrud_snapshot_age_seconds") < 10
    finally:
        d.stop()


def test_kernel_erange_without_force_scan_then_a_reload_clears_it(memcgs, workloads, tmp_path):
    cg = memcgs("erange")
    workloads("--size", "32M", cgroup=cg)
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(config("/mglrud-test/erange", force_scan=False))
    d = DaemonProc.start(["-c", str(cfg), "--listen.port", "0"], tmp_path / "mglrud.log", wait=WAIT)
    try:
        # Two agings make the 4th generation; the next is refused with ERANGE.
        hit = d.wait_metrics(lambda t: errors(t, "erange") >= 2, "no ERANGE from the kernel with force_scan off")
        assert d.proc.poll() is None and metric_value(hit, 'mglrud_source_up{source="lru_gen"}') == 1.0
        cfg.write_text(config("/mglrud-test/erange", force_scan=True))
        d.proc.send_signal(signal.SIGHUP)
        after = d.wait_metrics(lambda t: "reloaded" in d.log_text(), "no reload")
        base, runs = errors(after, "erange"), metric_value(after, "mglrud_aging_runs_total")
        later = d.wait_metrics(lambda t: metric_value(t, "mglrud_aging_runs_total") >= runs + 3, "no agings after the reload")
        # At most one aging was in flight with the old flags when the reload landed.
        assert errors(later, "erange") <= base + 1, "ERANGE goes on with force_scan on"
    finally:
        d.stop()


def test_memcg_removed_then_made_again(memcgs, tmp_path):
    cg = memcgs("comes-and-goes")
    cfg = tmp_path / "mglrud.yaml"
    cfg.write_text(config("/mglrud-test/comes-and-goes"))
    d = DaemonProc.start(["-c", str(cfg), "--listen.port", "0"], tmp_path / "mglrud.log", wait=WAIT)
    try:
        series = 'mglrud_memcg_generation_bytes{'
        d.wait_metrics(lambda t: metric_value(t, 'mglrud_target_memcgs{target="t"}') == 1.0
                   and (metric_value(t, "mglrud_aging_runs_total") or 0) >= 2, "the memcg was never aged")
        cg.rmdir()
        gone = d.wait_metrics(lambda t: metric_value(t, 'mglrud_target_memcgs{target="t"}') == 0.0,
                          "the removed memcg is still a target")
        # one more snapshot (the positive signal): its series must be gone, not stale
        after = json.loads(d.get_tcp("/snapshot.json"))["taken_at"]
        deadline = time.monotonic() + WAIT
        while json.loads(d.get_tcp("/snapshot.json"))["taken_at"] <= after:
            assert time.monotonic() < deadline, "no snapshot after the memcg was gone:\n" + d.log_text()
            time.sleep(0.3)
        text = d.get("/metrics")
        assert not [l for l in text.splitlines() if l.startswith(series) and "comes-and-goes" in l], text
        assert metric_value(gone, 'mglrud_source_up{source="lru_gen"}') == 1.0
        cg.mkdir()
        runs = metric_value(text, "mglrud_aging_runs_total")
        back = d.wait_metrics(lambda t: metric_value(t, 'mglrud_target_memcgs{target="t"}') == 1.0
                          and metric_value(t, "mglrud_aging_runs_total") >= runs + 2, "the memcg made again was not aged")
        assert d.proc.poll() is None and back
    finally:
        d.stop()


def test_not_root_is_eperm_with_the_reason(tmp_path):
    # pytest's tmp_path is 0700 root: the config goes where user nobody can read it.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shared:
        os.chmod(shared, 0o755)
        cfg = Path(shared) / "mglrud.yaml"
        cfg.write_text(config("/"))
        cfg.chmod(0o644)
        d = DaemonProc.start([], tmp_path / "mglrud.log", wait=WAIT, forks=False, wrapper=[
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
            sys.executable, "-m", "mglrud", "run", "-c", str(cfg), "--listen.port", "0"])
        try:
            text = d.get("/metrics")
            assert metric_value(text, 'mglrud_source_up{source="lru_gen"}') == 0.0, text
            assert "run mglrud as root" in d.log_text(), d.log_text()
            assert d.proc.poll() is None
        finally:
            d.stop()
