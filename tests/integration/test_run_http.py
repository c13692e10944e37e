"""`mglrud run` as a subprocess on 127.0.0.1, against a copied fixture tree, scraped over HTTP.

The tree is a copy of a capture from tests/fixtures/roots when one is there
(else SYNTHETIC lru_gen text printed with the kernel's formats, see
tests/unit/synth.py). Every wait is bounded; the daemon is stopped by pid.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from synth import lru_gen_text  # noqa: E402

from tests.daemonproc import DaemonProc, fixture_flags  # noqa: E402

WAIT = 120  # seconds; the host may be busy building a kernel


def _tree(tmp_path: Path) -> Path:
    roots = sorted(p.parent.parent for p in (REPO / "tests/fixtures").glob("roots/*/debugfs/lru_gen"))
    root = tmp_path / "root"
    if roots:
        shutil.copytree(roots[0], root)
    else:
        (root / "debugfs").mkdir(parents=True)
        (root / "debugfs/lru_gen").write_text(lru_gen_text([
            (1, "/", [(0, [(5, 9000, 100, 200), (6, 100, 1, 2)])]),
            (3, "/mglrud-fixture/hot", [(0, [(7, 4000, 100, 0), (8, 10, 5, 0)])]),
        ]))
    return root


def _wait_for(pred, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"mglrud exited ({proc.returncode}) waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


class Daemon:
    def __init__(self, tmp_path: Path, root: Path, config: str):
        self.config = tmp_path / "mglrud.yaml"
        self.config.write_text(config)
        self._d = DaemonProc.start(["--config", str(self.config), "--listen.port", "0", *fixture_flags(root)],
                                   tmp_path / "mglrud.log", wait=WAIT)
        self.proc, self.log, self.base = self._d.proc, self._d.log, self._d.base

    def metric(self, line_prefix: str) -> float | None:
        _, _, text = _get(self.base + "/metrics")
        for line in text.splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> int:
        rc = self._d.stop(wait=WAIT)
        assert rc != -signal.SIGKILL, "mglrud ignored SIGTERM"
        return rc


CONFIG = """
aging: {interval: 1s, dry_run: true}
snapshot: {interval: 1s}
metrics: {cold_thresholds: [1s, 2s]}
targets: [{name: all, memcg: "/**"}]
log: {level: info}
"""


@pytest.fixture
def daemon(tmp_path):
    started = []

    def start(config: str = CONFIG, root: Path | None = None) -> Daemon:
        d = Daemon(tmp_path, root or _tree(tmp_path), config)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_run_serves_metrics_and_snapshot(daemon):
    d = daemon()
    lru_gen = (Path(d.log).parent / "root/debugfs/lru_gen").read_text()

    runs = _wait_for(lambda: d.metric("mglrud_aging_runs_total"), "an aging run", d.proc, d.log)
    assert runs >= 1
    status, ctype, text = _get(d.base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert 'mglrud_source_up{source="lru_gen"} 1.0' in text
    assert 'mglrud_memcg_resident_bytes{lru="anon",memcg="/",numa_node="0"}' in text
    assert 'mglrud_aging_errors_total{reason="einval"} 0.0' in text
    # the daemon's whole /metrics, process_* and the reload gauges included, is clean for promtool
    assert "process_resident_memory_bytes " in text and "mglrud_config_last_reload_successful 1.0" in text
    p = subprocess.run([shutil.which("promtool") or "/usr/bin/promtool", "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")

    status, ctype, body = _get(d.base + "/snapshot.json")
    assert status == 200 and ctype == "application/json"
    snap = json.loads(body)
    assert snap["version"] == 1 and snap["sources"] == [{"name": "lru_gen", "up": True, "reason": ""}]
    listed = {(m["memcg_id"], m["node"]) for m in snap["memcgs"]}
    pages: dict = {}
    max_seq: dict = {}
    for line in lru_gen.splitlines():
        w = line.split()
        if w[0] == "memcg":
            mid = int(w[1])
        elif w[0] == "node":
            node = int(w[1])
        elif len(w) == 4:
            pages[(mid, node)] = pages.get((mid, node), 0) + int(w[2]) + int(w[3])
            max_seq[(mid, node)] = int(w[0])
    # memcgs without a resident page are left out by default (metrics.keep_empty_memcgs)
    expected = {k for k, n in pages.items() if n}
    assert listed == expected and len(expected) < len(pages)

    # dry run: the exact commands are logged, the file is untouched
    commands = set(re.findall(r"would write '([^']+)'", d.log.read_text()))
    # every lruvec is aged, empty ones too (they are only left out of the snapshot)
    assert commands and commands <= {f"+ {mid} {node} {seq} 1 1" for (mid, node), seq in max_seq.items()}
    assert (Path(d.log).parent / "root/debugfs/lru_gen").read_text() == lru_gen

    assert _get(d.base + "/nope")[0] == 404
    assert d.stop() == 0
    assert "stopped" in d.log.read_text()


def test_real_writer_never_clobbers_a_copy_and_errors_are_not_fatal(daemon, tmp_path):
    d = daemon(CONFIG.replace("dry_run: true", "dry_run: false"))
    lru_gen = (tmp_path / "root/debugfs/lru_gen").read_text()
    errors = _wait_for(lambda: d.metric('mglrud_aging_errors_total{reason="other"}'), "a counted error",
                       d.proc, d.log)
    assert errors >= 1
    assert (tmp_path / "root/debugfs/lru_gen").read_text() == lru_gen
    assert d.proc.poll() is None
    assert d.metric('mglrud_source_up{source="lru_gen"}') == 1.0


def test_reload_keeps_old_config_when_new_one_is_bad(daemon):
    d = daemon()
    d.config.write_text("aging: {interval: soon}\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    _wait_for(lambda: "reload failed" in d.log.read_text(), "the reload error", d.proc, d.log)
    assert "config: aging.interval: must be a duration" in d.log.read_text()
    assert _get(d.base + "/metrics")[0] == 200
    assert d.metric("mglrud_config_last_reload_successful") == 0.0
    started = d.metric("mglrud_config_last_reload_success_timestamp_seconds")
    d.config.write_text(CONFIG.replace("[1s, 2s]", "[1s, 3s]"))
    os.kill(d.proc.pid, signal.SIGHUP)
    _wait_for(lambda: 'threshold="3.0"' in _get(d.base + "/metrics")[2], "the reloaded thresholds", d.proc, d.log)
    assert d.metric("mglrud_config_last_reload_successful") == 1.0
    assert d.metric("mglrud_config_last_reload_success_timestamp_seconds") > started
    assert d.stop() == 0


def test_missing_debugfs_is_not_fatal(daemon, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    d = daemon(root=root)
    up = _wait_for(lambda: d.metric('mglrud_source_up{source="lru_gen"}') is not None, "source_up", d.proc, d.log)
    assert up and d.metric('mglrud_source_up{source="lru_gen"}') == 0.0
    assert d.proc.poll() is None
    assert _get(d.base + "/snapshot.json")[0] == 200
