"""mglrud_memcg_info (mglrud/collectors/workload.py): rendered from lru_gen fixtures, checked by promtool."""

import json
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from mglrud.collectors.workload import HELP, families, memcg_info
from mglrud.sources import lru_gen

FIX = REPO / "tests" / "fixtures" / "workload"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _exposition(memcgs) -> str:
    class One:
        def collect(self):
            yield memcg_info(memcgs)

    registry = CollectorRegistry()
    registry.register(One())
    return generate_latest(registry).decode()


def test_one_series_per_memcg_with_its_pod_and_container():
    lruvecs = lru_gen.parse((FIX / "lru_gen.kubelet-systemd-containerd").read_text())
    expected = json.loads((FIX / "kubelet-systemd-containerd.expected.json").read_text())
    # two NUMA nodes: every memcg listed twice, still one series each
    text = _exposition([h.memcg_path for h in lruvecs] * 2)
    [family] = text_string_to_metric_families(text)
    assert family.name == "mglrud_memcg_info" and family.type == "gauge"
    got = {s.labels["memcg"]: s for s in family.samples}
    assert sorted(got) == sorted(expected)
    for path, s in got.items():
        assert s.value == 1
        want = {k: expected[path][k] for k in ("unit", "pod_uid", "container_id", "qos_class")}
        assert s.labels == {"memcg": path, **want}
    pods = {s.labels["pod_uid"] for s in family.samples if s.labels["container_id"]}
    assert len(pods) == 4


def test_promtool_check_metrics():
    if not shutil.which(PROMTOOL) and not (REPO / PROMTOOL).exists():
        pytest.fail("promtool missing: scripts/install-deps test installs Debian's prometheus")
    memcgs = [h.memcg_path for f in sorted(FIX.glob("lru_gen.*")) for h in lru_gen.parse(f.read_text())]
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=_exposition(memcgs), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_empty_family_without_memcgs():
    assert memcg_info([]).samples == []


def test_documented():
    doc = (REPO / "docs" / "metrics.md").read_text()
    assert f"| `mglrud_memcg_info` | gauge (info) | memcg, unit, pod_uid, container_id, qos_class | {HELP} |" in doc


def test_families_of_a_snapshot():
    """The seam the other family modules have: one family for the snapshot's memcgs, none before data."""
    from types import SimpleNamespace
    lruvecs = lru_gen.parse((FIX / "lru_gen.kubelet-cgroupfs-crio").read_text())
    [family] = families(SimpleNamespace(lruvecs=lruvecs))
    assert {s.labels["memcg"] for s in family.samples} == {h.memcg_path for h in lruvecs}
    assert list(families(None)) == [] and list(families(SimpleNamespace(lruvecs=()))) == []
