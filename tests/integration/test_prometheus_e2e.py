"""A real Prometheus (Debian's /usr/bin/prometheus) with mglrud's rules, scraping six real mglrud instances.

Instances, each `python3 -m mglrud run` on its own 127.0.0.1 port, standing in for hosts:

- replay-cold, replay-hot, replay-file: the lru_gen source reading
  tests/fixtures/roots/vm-2node -- lru_gen, sysfs, cgroup and /proc captured from
  a real 6.12 guest -- one fixture memcg each (aging.dry_run: nothing is written).
  This host has no MGLRU, so these are REPLAY: their numbers are the capture's,
  frozen, and every series from them carries the target label
  replay="tests/fixtures/roots/vm-2node" (set in the scrape config).
  replay-file is served over HTTPS with a web config (tests/tlsca.py makes a CA with
  openssl): a client certificate and basic auth are required, and Prometheus scrapes
  it with `scheme: https`, `tls_config` and `basic_auth` (its own scrape config,
  relabelled into job="mglrud" like the others).
- replay-bpf: the BPF source replaying the map dumps captured in the guest
  (tests/fixtures/bpf) through the real source, collectors and HTTP server
  (tests/bpf_replay.py; bcc and the patched kernel exist only in the VM), with
  replay="tests/fixtures/bpf"; the mglrud / Heat (BPF) dashboard reads it.
- host-cold, host-hot: the /proc source on this host, each with one pid target: a
  helper process that maps 96 MiB of anonymous memory and touches it once
  (cold) or in a loop (hot). Only those helpers' accessed bits are cleared.

Prometheus scrapes every second and evaluates rules every second. The rules are
deploy/prometheus/rules/mglrud.rules.yml with every alert's `for:` cut to a few
seconds (expressions unchanged), so the cold-memory alerts go pending and then
firing quickly; their thresholds are the shipped ones (more than half cold, at
least 64 MiB). The test then checks:

- every query of every dashboard (grafana/dashboards/*.json), with its variables
  filled in, returns data through /api/v1/query, and each query variable's
  label_values() lists the value used;
- MglrudColdMemoryHigh fires for replay-cold only, MglrudTargetColdMemoryHigh for
  host-cold only: over the whole run no other instance was ever pending or firing.

Every process is stopped by its pid with a bounded wait; every wait is a bounded poll.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.tlsca import CA  # noqa: E402

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RULES = REPO / "deploy" / "prometheus" / "rules" / "mglrud.rules.yml"
# Not mglrud-kubernetes.json: this stack has no pods and no kube-state-metrics to name them;
# tests/unit/test_grafana_kubernetes.py runs its queries with promtool over synthetic ones.
DASHBOARDS = sorted(p for p in (REPO / "grafana" / "dashboards").glob("*.json") if p.stem != "mglrud-kubernetes")
FIXTURE = REPO / "tests" / "fixtures" / "roots" / "vm-2node"
REPLAY_LABEL = "tests/fixtures/roots/vm-2node"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

WAIT = 180  # seconds, an upper bound for any one wait (the host may be busy)
ALERT_FOR = "3s"
SIZE = 96 << 20
THRESHOLDS = "[2s, 5s]"  # both <= 3 x aging.interval (2s)
THRESHOLD = "5.0"  # the one the dashboards' $threshold is set to

pytestmark = [
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs Debian's prometheus package"),
    pytest.mark.skipif(not (FIXTURE / "debugfs" / "lru_gen").exists(), reason="needs the vm-2node fixture tree"),
]

HELPER = r'''
import mmap, os, sys, time
mode, size, bound = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
parent, page = os.getppid(), mmap.PAGESIZE
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
def touch():
    for i in range(0, size, page):
        buf[i] = 1
touch()
print("ready", flush=True)
end = time.monotonic() + bound  # a bound on its life, not a timing
while time.monotonic() < end and os.getppid() == parent:
    if mode == "hot":
        touch()
    time.sleep(0.05 if mode == "hot" else 0.5)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    lines: queue.Queue = field(default_factory=queue.Queue)
    log: list = field(default_factory=list)

    def start_reader(self, stream) -> None:
        def pump():
            for line in stream:
                self.lines.put(line)
        threading.Thread(target=pump, daemon=True).start()

    def wait_line(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.popen.poll() is not None:
                    pytest.fail(f"{self.name} exited ({self.popen.returncode}):\n{''.join(self.log)}")
                continue
            self.log.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        pytest.fail(f"{self.name}: no line matching {pattern!r} within {WAIT}s:\n{''.join(self.log)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=20)


def spawn(name: str, argv: list[str], *, stream: str = "stderr", **kw) -> Proc:
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                             stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
                             text=True, **kw)
    p = Proc(name, popen)
    p.start_reader(popen.stdout if stream == "stdout" else popen.stderr)
    return p


def replay_config(memcg: str) -> dict:
    paths = {k: str(FIXTURE / d) for k, d in
             (("procfs", "proc"), ("sysfs", "sys"), ("debugfs", "debugfs"), ("cgroupfs", "cgroup"))}
    return {"aging": {"interval": "2s", "dry_run": True}, "snapshot": {"interval": "1s"},
            "metrics": {"cold_thresholds": yaml.safe_load(THRESHOLDS), "idle_age_buckets": ["1s", "2s", "5s"]},
            "sources": ["lru_gen"], "targets": [{"name": memcg.rsplit("/", 1)[1], "memcg": memcg}],
            "paths": paths}


def procfs_config(target: str, pid: int) -> dict:
    return {"aging": {"interval": "2s"}, "snapshot": {"interval": "1s"},
            "metrics": {"cold_thresholds": yaml.safe_load(THRESHOLDS), "idle_age_buckets": ["1s", "2s", "5s"]},
            "sources": ["procfs"], "targets": [{"name": target, "pid": pid}]}


class PromAPI:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False


def wait_for(pred, what: str, procs: list[Proc]):
    deadline = time.monotonic() + WAIT
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}")
        try:
            last = pred()
        except (OSError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {WAIT}s waiting for {what}; last: {last!r}")


@dataclass
class Stack:
    api: PromAPI
    instances: dict[str, str]  # name -> "127.0.0.1:port"
    procs: list[Proc]


def _test_rules(dest: Path) -> Path:
    """The shipped rules with every alert's `for:` shortened; expressions untouched."""
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                r["for"] = ALERT_FOR
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom-e2e")
    procs: list[Proc] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        helpers = {}
        for mode in ("cold", "hot"):
            h = spawn(f"helper-{mode}", [PYTHON, "-c", HELPER, mode, str(SIZE), "900"], stream="stdout")
            procs.append(h)
            h.wait_line(r"^ready")
            helpers[mode] = h.popen.pid

        configs = {
            "replay-cold": replay_config("/mglrud-fixture/cold"),
            "replay-hot": replay_config("/mglrud-fixture/hot"),
            "replay-file": replay_config("/mglrud-fixture/file"),
            "host-cold": procfs_config("cold-workload", helpers["cold"]),
            "host-hot": procfs_config("hot-workload", helpers["hot"]),
        }
        # replay-file over HTTPS: client certificate and basic auth required.
        ca = CA.make(tmp / "ca")
        password = "e2e-s3cret"
        web = tmp / "web-config.yml"
        web.write_text(yaml.safe_dump({
            "tls_server_config": {"cert_file": str(ca.server_crt), "key_file": str(ca.server_key),
                                  "client_ca_file": str(ca.ca_crt), "client_auth_type": "RequireAndVerifyClientCert"},
            "basic_auth_users": {"prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}}))
        instances = {}
        for name, cfg in configs.items():
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            tls = ["--web.config.file", str(web)] if name == "replay-file" else []
            p = spawn(name, [PYTHON, "-m", "mglrud", "run", "--config", str(path), "--listen.port", "0", *tls],
                      cwd=REPO, env=env)
            procs.append(p)
            scheme = "https" if tls else "http"
            m = p.wait_line(rf"serving {scheme}://127\.0\.0\.1:(\d+)/metrics")
            instances[name] = f"127.0.0.1:{m.group(1)}"

        # The BPF source needs the patched kernel: its maps as captured in the guest, replayed
        # through the real source, collectors and HTTP server (tests/bpf_replay.py).
        p = spawn("replay-bpf", [PYTHON, str(REPO / "tests" / "bpf_replay.py"), "--port", "0", "--seconds", "1800"],
                  stream="stdout", cwd=REPO, env=env)
        procs.append(p)
        m = p.wait_line(r"serving http://127\.0\.0\.1:(\d+)/metrics")
        instances["replay-bpf"] = f"127.0.0.1:{m.group(1)}"

        rules = _test_rules(tmp / "mglrud.test-rules.yml")
        scrape = {
            "job_name": "mglrud",
            "static_configs": [
                {"targets": [instances[n] for n in ("replay-cold", "replay-hot")],
                 "labels": {"replay": REPLAY_LABEL}},
                {"targets": [instances["replay-bpf"]], "labels": {"replay": "tests/fixtures/bpf"}},
                {"targets": [instances[n] for n in ("host-cold", "host-hot")]},
            ],
        }
        scrape_tls = {
            "job_name": "mglrud-https",
            "scheme": "https",
            "tls_config": {"ca_file": str(ca.ca_crt), "cert_file": str(ca.client_crt), "key_file": str(ca.client_key)},
            "basic_auth": {"username": "prometheus", "password": password},
            "static_configs": [{"targets": [instances["replay-file"]], "labels": {"replay": REPLAY_LABEL}}],
            # one job for the rules and dashboards, whatever the scheme
            "relabel_configs": [{"target_label": "job", "replacement": "mglrud"}],
        }
        prom_cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)], "scrape_configs": [scrape, scrape_tls]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        port = free_port()
        prom = spawn("prometheus", [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--storage.tsdb.retention.time=1h", "--log.level=warn"])
        procs.append(prom)
        api = PromAPI(port)
        wait_for(api.ready, "Prometheus /-/ready", procs)
        wait_for(lambda: len([r for r in api.query('up{job="mglrud"} == 1')]) == len(instances),
                 "every mglrud instance scraped with up == 1", procs)
        https = instances["replay-file"]
        wait_for(lambda: api.query(f'up{{job="mglrud", instance="{https}"}} == 1'),
                 "the HTTPS instance (client certificate, basic auth) scraped with up == 1", procs)
        wait_for(lambda: len(api.query('mglrud_source_up{source="procfs"} == 1')) == 2,
                 "both /proc instances to report their source up", procs)
        # Not a skip when the first query is empty: the series must come, within the deadline.
        wait_for(lambda: len(api.query("count by (instance) (mglrud_mapping_resident_bytes)")) == 2,
                 "mglrud_mapping_resident_bytes from both /proc instances", procs)
        # Accessed bytes exist only after a process's first full interval.
        wait_for(lambda: api.query('count(count by (instance) (mglrud_mapping_accessed_bytes)) == 2'),
                 "accessed bytes from both /proc instances", procs)
        yield Stack(api, instances, procs)
    finally:
        for p in reversed(procs):
            p.stop()


# ---------------------------------------------------------------- alerts

def _ever_alerting(api: PromAPI, alertname: str) -> dict[str, set[str]]:
    """instance -> alert states seen over the whole run (pending, firing)."""
    out: dict[str, set[str]] = {}
    for r in api.query(f'max_over_time(ALERTS{{alertname="{alertname}"}}[1h])'):
        out.setdefault(r["metric"]["instance"], set()).add(r["metric"]["alertstate"])
    return out


def test_cold_memcg_alert_fires_for_the_cold_replay_instance_only(stack):
    cold = stack.instances["replay-cold"]
    wait_for(lambda: stack.api.query(f'ALERTS{{alertname="MglrudColdMemoryHigh", alertstate="firing", '
                                     f'instance="{cold}"}}'),
             "MglrudColdMemoryHigh firing for replay-cold", stack.procs)
    seen = _ever_alerting(stack.api, "MglrudColdMemoryHigh")
    assert seen == {cold: {"pending", "firing"}}, seen
    # The alert's series carries the replay label: nobody mistakes it for a live host.
    firing = stack.api.query('ALERTS{alertname="MglrudColdMemoryHigh", alertstate="firing"}')
    assert {r["metric"].get("replay") for r in firing} == {REPLAY_LABEL}
    # And the others really were measured: they have a cold fraction, just not a high one.
    fractions = {r["metric"]["instance"]: float(r["value"][1]) for r in stack.api.query(
        'min without (threshold) (memcg:mglrud_memcg_cold_fraction:ratio)')}
    assert fractions[cold] > 0.5
    assert fractions[stack.instances["replay-hot"]] < 0.5


def test_cold_target_alert_fires_for_the_cold_host_instance_only(stack):
    cold = stack.instances["host-cold"]
    wait_for(lambda: stack.api.query(f'ALERTS{{alertname="MglrudTargetColdMemoryHigh", alertstate="firing", '
                                     f'instance="{cold}"}}'),
             "MglrudTargetColdMemoryHigh firing for host-cold", stack.procs)
    seen = _ever_alerting(stack.api, "MglrudTargetColdMemoryHigh")
    assert seen == {cold: {"pending", "firing"}}, seen


def test_no_alert_about_the_daemons(stack):
    """Health alerts stay quiet: every daemon is up, ages (or reads) and publishes fresh snapshots."""
    for alert in ("MglrudDown", "MglrudAgingFailing", "MglrudSnapshotStale", "MglrudNoSourceUp",
                  "MglrudConfigReloadFailed"):
        assert _ever_alerting(stack.api, alert) == {}, alert


# ---------------------------------------------------------------- dashboards

def _variables(dashboard: str, stack: Stack) -> dict[str, str]:
    """Values a user would pick: one instance for the per-host dashboards, All (.+) elsewhere."""
    common = {"job": "mglrud", "threshold": THRESHOLD, "lru": ".+", "memcg": ".+", "instance": ".+",
              "__rate_interval": "15s", "__interval": "1s", "__range": "1m"}
    if dashboard == "mglrud-host":
        common["instance"] = stack.instances["replay-cold"]
    if dashboard == "mglrud-heat":
        common["instance"] = stack.instances["replay-bpf"]
        common["target"] = "w"
        common["threshold"] = "1.0"
    if dashboard == "mglrud-process":
        common["instance"] = stack.instances["host-cold"]
        common["target"] = "cold-workload"
    return common


def _fill(expr: str, values: dict[str, str]) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"no value for variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def _panels(d: dict):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def _finite(result: list[dict]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(stack, path):
    d = json.loads(path.read_text())
    if path.stem == "mglrud-fleet":
        # The fleet's "alerts" panel needs an alert pending or firing.
        wait_for(lambda: stack.api.query('ALERTS{alertname=~"Mglrud.*"}'), "an mglrud alert", stack.procs)
    values = _variables(path.stem, stack)

    # Query variables: label_values(metric{matchers}, label) must offer the value the panels use.
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert m, f"{path.name}: variable {v['name']}: unexpected query {query!r}"
        selector, label = _fill(m.group(1), values), m.group(2)
        offered = stack.api.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert offered, f"{path.name}: variable {v['name']}: {selector} offers no {label}"
        want = values[v["name"]]
        assert want == ".+" or want in offered, f"{path.name}: ${v['name']}={want!r} not in {offered}"

    for p in _panels(d):
        for t in p.get("targets", []):
            expr = _fill(t["expr"], values)
            # Bounded: rate() windows and the /proc source's first interval fill within seconds.
            wait_for(lambda: _finite(stack.api.query(expr)),
                     f"{path.name}: panel {p['title']!r} query {t['refId']} to return a number: {expr}",
                     stack.procs)
