"""Issue 16's VM test: a kubelet-style cgroup hierarchy on the real kernel, named on mglrud_memcg_info.

In the guest, the test makes the cgroups a kubelet with the systemd driver and
containerd would make for a Burstable pod (kubepods.slice/kubepods-burstable.slice/
kubepods-burstable-pod<UID, "-" as "_">.slice/cri-containerd-<ID>.scope), and the
cgroupfs driver's for a BestEffort pod (kubepods/besteffort/pod<UID>/<ID>), puts a
workload with 32 MiB of anonymous memory in each "container", then reads the kernel's
own /sys/kernel/debug/lru_gen through mglrud's lru_gen source and renders
mglrud_memcg_info from its memcg paths: each container's series must carry its pod
UID (with dashes), container ID, QoS class and unit, and its memcg must hold the
workload's memory.

The daemon does not export mglrud_memcg_info yet (collectors/workload.py's families()
is one name to add in collectors/__init__.py); once it does, this should read it from
the daemon's /metrics (tests/daemonproc.py) instead of rendering the family itself.

Runs inside the guest (kernel-patch/vm-run.sh -- -k test_workload_vm); skipped elsewhere.
"""

import os
import uuid
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mglrud.collectors.workload import memcg_info
from mglrud.config import Paths
from mglrud.fs import FS
from mglrud.sources import lru_gen

import cgroup

ROOT = Path("/sys/fs/cgroup")
POD_A = str(uuid.uuid4())
POD_B = str(uuid.uuid4())
CID_A = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex digits, as containerd's IDs
CID_B = uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
def kubelet_tree():
    """The two pods' cgroups with the memory controller down to the containers; removed after."""
    esc = POD_A.replace("-", "_")
    systemd = ["kubepods.slice", "kubepods-burstable.slice", f"kubepods-burstable-pod{esc}.slice",
               f"cri-containerd-{CID_A}.scope"]
    cgroupfs = ["kubepods", "besteffort", f"pod{POD_B}", CID_B]
    made = []
    for chain in (systemd, cgroupfs):
        parent = ROOT
        for name in chain:
            (parent / "cgroup.subtree_control").write_text("+memory")
            parent = parent / name
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
    yield ROOT.joinpath(*systemd), ROOT.joinpath(*cgroupfs)
    for path in reversed(made):
        cgroup.remove(path)


def test_pod_and_container_on_the_info_series(kubelet_tree, workloads):
    container_a, container_b = kubelet_tree
    workloads("--size", "32M", cgroup=container_a)
    workloads("--size", "32M", cgroup=container_b)
    fs = FS(Paths())
    lruvecs = lru_gen.read(fs)
    paths = {h.memcg_path for h in lruvecs}
    memcg_a = "/" + str(container_a.relative_to(ROOT))
    memcg_b = "/" + str(container_b.relative_to(ROOT))
    assert {memcg_a, memcg_b} <= paths, "the kernel's lru_gen lists both containers' memcgs by these paths"
    page = os.sysconf("SC_PAGE_SIZE")
    resident = {p: sum(h.pages("anon") for h in lruvecs if h.memcg_path == p) * page for p in (memcg_a, memcg_b)}
    assert all(b >= 30 << 20 for b in resident.values()), resident  # the workloads' memory is charged there

    class One:
        def collect(self):
            yield memcg_info(h.memcg_path for h in lruvecs)

    registry = CollectorRegistry()
    registry.register(One())
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    series = {s.labels["memcg"]: s.labels for s in family.samples}
    assert len(series) == len(paths)
    assert series[memcg_a] == {"memcg": memcg_a, "unit": f"cri-containerd-{CID_A}.scope", "pod_uid": POD_A,
                               "container_id": CID_A, "qos_class": "Burstable"}
    assert series[memcg_b] == {"memcg": memcg_b, "unit": "", "pod_uid": POD_B, "container_id": CID_B,
                               "qos_class": "BestEffort"}
    pod_a = memcg_a.rsplit("/", 1)[0]
    assert series[pod_a]["pod_uid"] == POD_A and series[pod_a]["container_id"] == ""
