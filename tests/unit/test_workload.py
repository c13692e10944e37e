"""mglrud.model.workload: cgroup v2 paths -> systemd unit, container, Kubernetes pod and QoS class.

The fixtures (tests/fixtures/workload/, README there) are lru_gen files of
nine cgroup layouts, each memcg with the identity it must get, written by
make_fixtures.py from the writers' naming rules (not from mglrud.model.workload).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mglrud.model import workload
from mglrud.sources import lru_gen

FIX = REPO / "tests" / "fixtures" / "workload"
LAYOUTS = sorted(p.name.removeprefix("lru_gen.") for p in FIX.glob("lru_gen.*"))
UID = "0f3e5a2c-1b2d-4c3e-8f9a-0b1c2d3e4f5a"
ESC = UID.replace("-", "_")
CID = "3b5f3d86268ecc45dc6bf1e1a399f82a65aa9c8279f248b08cb4a0d7d6225675"


def test_every_driver_has_a_fixture():
    assert set(LAYOUTS) >= {
        "host-systemd", "docker-cgroupfs", "kubelet-systemd-containerd", "kubelet-systemd-crio",
        "kubelet-systemd-docker", "kubelet-cgroupfs-containerd", "kubelet-cgroupfs-crio",
        "kubelet-systemd-containerd-runc-cgroupfs", "kind-node"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixture_layout(layout):
    """Every memcg lru_gen lists gets exactly the identity its writer gave it."""
    memcgs = [h.memcg_path for h in lru_gen.parse((FIX / f"lru_gen.{layout}").read_text())]
    expected = json.loads((FIX / f"{layout}.expected.json").read_text())
    assert sorted(memcgs) == sorted(expected)
    wrong = {}
    for path in memcgs:
        got = workload.parse(path)
        want = workload.Workload(memcg=path, **expected[path])
        if got != want:
            wrong[path] = (got, want)
    assert not wrong, "\n".join(f"{p}\n  got  {g}\n  want {w}" for p, (g, w) in wrong.items())


@pytest.mark.parametrize("layout", [n for n in LAYOUTS if n.startswith(("kubelet", "kind"))])
def test_fixture_pods_cover_every_qos_class(layout):
    pods = [workload.parse(h.memcg_path) for h in lru_gen.parse((FIX / f"lru_gen.{layout}").read_text())]
    assert {w.qos_class for w in pods if w.pod_uid} == {"Guaranteed", "Burstable", "BestEffort"}
    assert all("_" not in w.pod_uid for w in pods)
    # a pod's memory is its slice plus its containers (the sandbox's among them)
    containers = [w for w in pods if w.container_id and w.pod_uid]
    assert len({w.pod_uid for w in containers}) == 4 and len(containers) >= 9


def test_fixtures_are_what_make_fixtures_writes():
    r = subprocess.run([sys.executable, str(FIX / "make_fixtures.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path, fields", [
    ("/", {}),
    ("/system.slice", {"unit": "system.slice"}),
    ("/system.slice/nginx.service", {"unit": "nginx.service"}),
    ("/system.slice/system-getty.slice/getty@tty1.service", {"unit": "getty@tty1.service"}),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/org.gnome.Shell@x11.service",
     {"unit": "org.gnome.Shell@x11.service"}),
    ("/user.slice/user-1000.slice/session-3.scope", {"unit": "session-3.scope"}),
    ("/mglrud-fixture/hot", {}),
    # containers outside Kubernetes
    (f"/system.slice/docker-{CID}.scope", {"unit": f"docker-{CID}.scope", "container_id": CID, "runtime": "docker"}),
    (f"/docker/{CID}", {"container_id": CID, "runtime": "docker"}),
    (f"/docker/{CID}/init.scope", {"unit": "init.scope", "container_id": CID, "runtime": "docker"}),  # systemd inside
    (f"/machine.slice/libpod-{CID}.scope/container",
     {"unit": f"libpod-{CID}.scope", "container_id": CID, "runtime": "podman"}),
    (f"/machine.slice/libpod-conmon-{CID}.scope", {"unit": f"libpod-conmon-{CID}.scope", "runtime": "podman"}),
    (f"/libpod_parent/libpod-{CID}", {"container_id": CID, "runtime": "podman"}),
    # kubelet, systemd driver: the UID's underscores become dashes again
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ESC}.slice",
     {"unit": f"kubepods-burstable-pod{ESC}.slice", "pod_uid": UID, "qos_class": "Burstable",
      "cgroup_driver": "systemd"}),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{ESC}.slice/crio-{CID}.scope",
     {"unit": f"crio-{CID}.scope", "pod_uid": UID, "container_id": CID, "qos_class": "BestEffort",
      "runtime": "cri-o", "cgroup_driver": "systemd"}),
    (f"/kubepods.slice/kubepods-pod{ESC}.slice/cri-containerd-{CID}.scope",
     {"unit": f"cri-containerd-{CID}.scope", "pod_uid": UID, "container_id": CID, "qos_class": "Guaranteed",
      "runtime": "containerd", "cgroup_driver": "systemd"}),
    (f"/kubepods.slice/kubepods-pod{ESC}.slice/docker-{CID}.scope",
     {"unit": f"docker-{CID}.scope", "pod_uid": UID, "container_id": CID, "qos_class": "Guaranteed",
      "runtime": "docker", "cgroup_driver": "systemd"}),
    (f"/kubepods.slice/kubepods-pod{ESC}.slice/kubepods-pod{ESC}.slice:cri-containerd:{CID}",
     {"unit": f"kubepods-pod{ESC}.slice", "pod_uid": UID, "container_id": CID, "qos_class": "Guaranteed",
      "runtime": "containerd", "cgroup_driver": "systemd"}),
    # kubelet, cgroupfs driver
    (f"/kubepods/pod{UID}/{CID}", {"pod_uid": UID, "container_id": CID, "qos_class": "Guaranteed",
                                   "cgroup_driver": "cgroupfs"}),
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}",
     {"pod_uid": UID, "container_id": CID, "qos_class": "BestEffort", "runtime": "cri-o", "cgroup_driver": "cgroupfs"}),
    (f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}",
     {"pod_uid": UID, "qos_class": "Burstable", "runtime": "cri-o", "cgroup_driver": "cgroupfs"}),
    ("/kubepods/burstable", {}),
    # --cgroup-root: kind's /kubelet, inside the node's own docker scope
    (f"/system.slice/docker-{'a' * 64}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{ESC}.slice/cri-containerd-{CID}.scope",
     {"unit": f"cri-containerd-{CID}.scope", "pod_uid": UID, "container_id": CID, "qos_class": "BestEffort",
      "runtime": "containerd", "cgroup_driver": "systemd"}),
    # a pod slice below a container scope: the outer container is not the pod's
    (f"/system.slice/docker-{'a' * 64}.scope/kubepods.slice/kubepods-pod{ESC}.slice",
     {"unit": f"kubepods-pod{ESC}.slice", "pod_uid": UID, "qos_class": "Guaranteed", "cgroup_driver": "systemd"}),
])
def test_parse(path, fields):
    assert workload.parse(path) == workload.Workload(memcg=path, **fields)


@pytest.mark.parametrize("path", [
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",  # not a UID
    f"/kubepods.slice/kubepods-guaranteed-pod{ESC}.slice",   # no such QoS level: Guaranteed has none
    f"/kubepods.slice/kubepods-a-b-pod{ESC}.slice",          # two levels between kubepods and the pod
    f"/system.slice/other-pod{ESC}.slice",                   # not below kubepods
    f"/kubepods/guaranteed/pod{UID}",                        # cgroupfs: no such QoS directory
    f"/elsewhere/pod{UID}",
])
def test_not_a_pod(path):
    w = workload.parse(path)
    assert (w.pod_uid, w.qos_class, w.cgroup_driver) == ("", "", ""), w


@pytest.mark.parametrize("path", [
    "/system.slice/docker-abc.scope",           # too short for a container ID
    f"/system.slice/docker-{CID.upper()}.scope",  # runtimes write lower-case hex
    f"/system.slice/unknown-{CID}.scope",       # a prefix no runtime uses
    f"/kubepods/pod{UID}/not-an-id",
    f"/elsewhere/docker/{CID}",                 # not docker's cgroupfs parent
])
def test_not_a_container(path):
    assert workload.parse(path).container_id == ""


def test_labels_are_the_info_series_labels():
    w = workload.parse(f"/kubepods/pod{UID}/{CID}")
    assert w.labels() == {"memcg": f"/kubepods/pod{UID}/{CID}", "unit": "", "pod_uid": UID,
                          "container_id": CID, "qos_class": "Guaranteed"}


def test_module_is_pure():
    """No I/O and no exporter library: the lead moves it into mglrud/model/."""
    tree = ast.parse(Path(workload.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "dataclasses"}, imported
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
