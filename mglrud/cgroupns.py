"""Is mglrud in a private cgroup namespace? Pure judgement over three /proc files.

Documentation/admin-guide/cgroup-v2.rst, "Namespace": inside a cgroup namespace,
/proc/PID/cgroup shows paths relative to the namespace's root (the cgroup the
namespace was made in shows as "/", cgroups outside it as "/.."), and so does
the root field of a cgroup2 mount in /proc/self/mountinfo (proc(5)). The kernel's
/sys/kernel/debug/lru_gen prints memcg paths from the real root whatever the
reader's namespace (mem_cgroup_path() with no namespace). In a private namespace
the two disagree, and process and unit targets, which find their memcg through
/proc/PID/cgroup, miss it. Containers get one by default on cgroup v2 (docker,
podman, and containerd and CRI-O for every non-privileged Kubernetes container).

The evidence, any one of which is enough:
- /proc/self/ns/cgroup is not the initial namespace, `cgroup:[4026531835]`
  (PROC_CGROUP_INIT_INO, include/linux/proc_ns.h);
- a cgroup2 mount's root starts with "/..": the mount's root is above the namespace's;
- PID 1's cgroup (the host's init when the PID namespace is the host's) starts with "/..".
"""

from __future__ import annotations

import re

INIT_CGROUP_NS = "cgroup:[4026531835]"  # 0xEFFFFFFB
ADVICE = ("/proc/PID/cgroup paths are relative to it while lru_gen prints them from the root, so process "
          "and unit targets miss their memcgs; run mglrud in the host's: `nsenter --cgroup=/proc/1/ns/cgroup` "
          "in the host's PID namespace, `--cgroupns=host` for docker and podman, or the DaemonSet of "
          "deploy/kubernetes")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def cgroup2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, root) of each cgroup2 mount in /proc/PID/mountinfo (proc(5))."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep + 1 < len(fields) and fields[sep + 1] == "cgroup2" and len(fields) > 4:
            out.append((_unescape(fields[4]), _unescape(fields[3])))
    return out


def unified_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path ("0::PATH") of /proc/PID/cgroup, None on a v1-only system."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def judge(ns_link: str | None, mountinfo: str | None, pid1_cgroup: str | None,
          cgroupfs: str = "/sys/fs/cgroup") -> tuple[bool | None, str]:
    """(private?, one line saying why). None: nothing could be read (a fixture tree, or a kernel
    without cgroup namespaces, where nothing can be private either)."""
    evidence = []
    if ns_link and ns_link != INIT_CGROUP_NS:
        evidence.append(f"/proc/self/ns/cgroup is {ns_link}, not the initial {INIT_CGROUP_NS}")
    mounts = cgroup2_mounts(mountinfo) if mountinfo else []
    mounts.sort(key=lambda m: m[0] != cgroupfs)  # the one mglrud reads first
    for point, root in mounts:
        if root.startswith("/.."):
            evidence.append(f"the cgroup2 mount at {point} has root {root}")
            break
    pid1 = unified_path(pid1_cgroup) if pid1_cgroup else None
    if pid1 and pid1.startswith("/.."):
        evidence.append(f"PID 1 is in {pid1}")
    if evidence:
        return True, f"private ({'; '.join(evidence)}): {ADVICE}"
    if ns_link is None and not mounts:
        return None, "not checked: /proc/self/ns/cgroup and /proc/self/mountinfo unreadable"
    return False, "the host's (initial) cgroup namespace" if ns_link else "no sign of a private cgroup namespace"
