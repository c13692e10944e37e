"""Workload identity of a memcg: which systemd unit, container and Kubernetes pod a cgroup v2 path names.

Pure: a path in, a frozen `Workload` out; no I/O. The paths are the ones
/sys/kernel/debug/lru_gen prints (the cgroup v2 path from the root of the
hierarchy, "/" for the root; Documentation/admin-guide/cgroup-v2.rst), and the
names in them are made by these writers:

systemd (systemd.unit(5), systemd.slice(5)): every unit has a cgroup named after
  it, `*.slice`, `*.service`, `*.scope`, `*.socket`, `*.mount`, `*.swap`; a dash in
  a slice name is a step in the slice hierarchy, so `user-1000.slice` lives in
  `user.slice/user-1000.slice`. `unit` is the innermost unit of the path
  (`system.slice/foo.service` -> `foo.service`; a user manager's
  `user@1000.service/app.slice/bar.service` -> `bar.service`; a login
  `session-3.scope`).

runc's systemd cgroup driver (opencontainers/runc docs/systemd.md,
  libcontainer/cgroups/systemd getUnitName): a container whose OCI
  `linux.cgroupsPath` is `SLICE:PREFIX:NAME` gets the transient unit
  `PREFIX-NAME.scope` in SLICE. The PREFIX each runtime passes:
    containerd's CRI plugin   `cri-containerd`   (`SystemdCgroup = true` in its runc options)
    CRI-O                     `crio`, its conmon `crio-conmon`  (internal/config/cgmgr/systemd_linux.go)
    docker / cri-dockerd      `docker`           (moby cmd/dockerd/daemon_systemd_unix.go: parent `system.slice:docker:`)
    podman                    `libpod`, its conmon `libpod-conmon` (parent `machine.slice`, rootless
                              `user.slice` of the user manager; a podman pod adds `machine-libpod_pod_ID.slice`)
    nerdctl                   `nerdctl`
  crun (podman's default) puts the container's processes one level further
  down, in `libpod-ID.scope/container`. When the kubelet uses the systemd
  driver but runc does not (`SystemdCgroup = false`), runc makes a plain
  directory named after the whole `SLICE:cri-containerd:ID` string.

cgroupfs drivers (no systemd): docker's parent is `/docker` (`/docker/ID`),
  podman's `/libpod_parent/libpod-ID`; under the kubelet a container is a
  directory named by its ID in the pod's directory (containerd, cri-dockerd) or
  `crio-ID` (CRI-O).

The kubelet (kubernetes pkg/kubelet/cm): qos_container_manager_linux.go puts
  Burstable pods under `kubepods/burstable`, BestEffort under
  `kubepods/besteffort` and Guaranteed pods directly under `kubepods`;
  pod_container_manager_linux.go names a pod's cgroup `pod` + its UID
  (podCgroupNamePrefix). With the systemd driver, cgroup_manager_linux.go
  (escapeSystemdCgroupName, ParseSystemdToCgroupName) turns the abstract name
  {kubepods, burstable, pod<UID>} into the slice
  `kubepods-burstable-pod<UID with "-" replaced by "_">.slice`, expanded on disk as
  `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod…slice`;
  `--cgroup-root` adds leading components (kind's `/kubelet` gives
  `kubelet-kubepods-…`). So the UID's underscores go back to dashes here. A
  static pod's UID is the 32 hex digits of its config hash, an API pod's a UUID.

Nesting: the innermost workload wins. A node that is itself a container (kind:
`docker-NODE.scope/kubelet.slice/…`) names the pod's containers, not the node's;
a pod's cgroup found below a container scope clears that outer container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QOS_CLASSES = {"burstable": "Burstable", "besteffort": "BestEffort"}  # else Guaranteed

UNIT_SUFFIXES = (".slice", ".service", ".scope", ".socket", ".mount", ".swap")

# Scope prefixes (PREFIX-ID.scope) -> runtime label.
SCOPE_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}
# Monitors living beside the container in a scope of their own: the runtime is
# known, yet no container's memory is in them.
MONITOR_PREFIXES = {"crio-conmon": "cri-o", "libpod-conmon": "podman"}

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
# A pod UID after un-escaping: a UUID, or 32 hex digits (a static pod's config hash).
_POD_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_SCOPE = re.compile(r"(?P<prefix>[a-z][a-z-]*?)-(?P<id>[0-9a-f]{64})\.scope")
_CGROUPFS_CRIO = re.compile(r"crio-(?P<conmon>conmon-)?(?P<id>[0-9a-f]{64})")


@dataclass(frozen=True)
class Workload:
    """What a memcg belongs to. Empty strings where the path does not say."""

    memcg: str
    unit: str = ""          # innermost systemd unit: foo.service, session-3.scope, cri-containerd-ID.scope
    pod_uid: str = ""       # Kubernetes pod UID (dashes, as the API shows it)
    container_id: str = ""  # 64 hex digits, as `crictl ps` / `docker ps --no-trunc` show it
    qos_class: str = ""     # Guaranteed, Burstable or BestEffort (pods only)
    runtime: str = ""       # containerd, cri-o, docker, podman; "" where the path does not say
    cgroup_driver: str = ""  # systemd or cgroupfs, for kubelet pods

    def labels(self) -> dict[str, str]:
        return {"memcg": self.memcg, "unit": self.unit, "pod_uid": self.pod_uid,
                "container_id": self.container_id, "qos_class": self.qos_class}


def _pod_from_slice(name: str) -> tuple[str, str] | None:
    """`[ROOT-]kubepods[-QOS]-pod<uid_with_underscores>.slice` -> (uid, qos class)."""
    parts = name.removesuffix(".slice").split("-")
    if len(parts) < 2 or "kubepods" not in parts[:-1] or not parts[-1].startswith("pod"):
        return None
    uid = parts[-1][len("pod"):].replace("_", "-")
    between = parts[parts.index("kubepods") + 1:-1]
    if not _POD_UID.fullmatch(uid) or len(between) > 1:
        return None
    if between and between[0] not in QOS_CLASSES:
        return None
    return uid, QOS_CLASSES[between[0]] if between else "Guaranteed"


def _pod_from_dir(parent: list[str], name: str) -> tuple[str, str] | None:
    """cgroupfs: `.../kubepods[/QOS]/pod<uid>` -> (uid, qos class)."""
    if not name.startswith("pod") or not _POD_UID.fullmatch(name[3:]):
        return None
    if parent[-1:] == ["kubepods"]:
        return name[3:], "Guaranteed"
    if len(parent) >= 2 and parent[-2] == "kubepods" and parent[-1] in QOS_CLASSES:
        return name[3:], QOS_CLASSES[parent[-1]]
    return None


def parse(memcg: str) -> Workload:
    """The workload identity of one cgroup v2 path ("/" and unknown paths give empty fields)."""
    parts = [p for p in memcg.split("/") if p]
    unit = pod_uid = container_id = qos = runtime = driver = ""
    in_pod = False
    for i, name in enumerate(parts):
        if name.endswith(UNIT_SUFFIXES):
            unit = name
        pod = _pod_from_slice(name) if name.endswith(".slice") else _pod_from_dir(parts[:i], name)
        if pod:
            pod_uid, qos = pod
            driver = "systemd" if name.endswith(".slice") else "cgroupfs"
            container_id = runtime = ""  # an outer container is the node's, not the pod's
            in_pod = True
            continue
        m = _SCOPE.fullmatch(name)
        if m:
            prefix = m["prefix"]
            if prefix in SCOPE_RUNTIMES:
                container_id, runtime = m["id"], SCOPE_RUNTIMES[prefix]
            elif prefix in MONITOR_PREFIXES:
                container_id, runtime = "", MONITOR_PREFIXES[prefix]
            continue
        if ":cri-containerd:" in name:  # systemd kubelet, runc without the systemd driver
            cid = name.rsplit(":", 1)[1]
            if _CONTAINER_ID.fullmatch(cid):
                container_id, runtime = cid, "containerd"
            continue
        parent = parts[i - 1] if i else ""
        if in_pod and parent.startswith("pod"):
            # cgroupfs kubelet: the pod's directory holds one directory per container
            m = _CGROUPFS_CRIO.fullmatch(name)
            if m:
                container_id, runtime = ("" if m["conmon"] else m["id"]), "cri-o"
            elif _CONTAINER_ID.fullmatch(name):
                container_id = name  # containerd or cri-dockerd: the path does not say which
            continue
        if parent == "docker" and i == 1 and _CONTAINER_ID.fullmatch(name):
            container_id, runtime = name, "docker"
        elif parent == "libpod_parent" and name.startswith("libpod-") and _CONTAINER_ID.fullmatch(name[7:]):
            container_id, runtime = name[7:], "podman"
    return Workload(memcg=memcg, unit=unit, pod_uid=pod_uid, container_id=container_id,
                    qos_class=qos, runtime=runtime, cgroup_driver=driver)
