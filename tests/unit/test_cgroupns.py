"""mglrud/cgroupns.py and the `cgroup namespace` row of `mglrud check`, on /proc text as the kernel prints it.

The real thing (unshare --cgroup after moving into a child cgroup) is
tests/integration/test_cgroupns_unshare.py.
"""

import os

from conftest import paths_for
from mglrud import cgroupns
from mglrud.check import run
from mglrud.config import Paths
from mglrud.fs import FS

# /proc/self/mountinfo lines (proc(5)): a systemd host, and the same seen from a private
# namespace made two levels down (what `unshare --cgroup` in a child cgroup shows).
HOST = ("25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
        "36 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
PRIVATE = HOST.replace(" 0:30 / /sys/fs/cgroup", " 0:30 /../.. /sys/fs/cgroup")
# A hybrid (v1 + unified) host such as this project's machine: cgroup2 at /sys/fs/cgroup/unified.
HYBRID = "41 31 0:38 /.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
# A container's own cgroup2 mount, made inside its namespace: root "/", with a space escaped.
OWN = "600 590 0:30 / /sys/fs/my\\040cgroup ro,nosuid - cgroup2 cgroup rw\n"


def test_host():
    assert cgroupns.judge("cgroup:[4026531835]", HOST, "0::/init.scope\n") == (
        False, "the host's (initial) cgroup namespace")


def test_private_every_sign():
    private, detail = cgroupns.judge("cgroup:[4026532177]", PRIVATE, "0::/../../init.scope\n")
    assert private
    assert detail.startswith("private (/proc/self/ns/cgroup is cgroup:[4026532177], not the initial "
                             "cgroup:[4026531835]; the cgroup2 mount at /sys/fs/cgroup has root /../..; "
                             "PID 1 is in /../../init.scope): /proc/PID/cgroup paths are relative")
    assert "nsenter --cgroup=/proc/1/ns/cgroup" in detail


def test_each_sign_alone_is_enough():
    assert cgroupns.judge("cgroup:[4026532177]", None, None)[0] is True
    assert cgroupns.judge(None, PRIVATE, None)[0] is True
    assert cgroupns.judge(None, None, "12:memory:/\n0::/..\n")[0] is True
    assert cgroupns.judge(None, HYBRID, None) == (True, cgroupns.judge(None, HYBRID, None)[1])
    assert "mount at /sys/fs/cgroup/unified has root /.." in cgroupns.judge(None, HYBRID, None)[1]


def test_a_container_without_the_host_pid_namespace_and_its_own_mount():
    """Its own mount's root is "/" and PID 1 is its own: only the namespace link tells."""
    assert cgroupns.judge("cgroup:[4026532400]", OWN, "0::/\n")[0] is True
    assert cgroupns.cgroup2_mounts(OWN) == [("/sys/fs/my cgroup", "/")]


def test_unknown_when_nothing_is_readable():
    private, detail = cgroupns.judge(None, None, None)
    assert private is None and detail.startswith("not checked")


def test_v1_only_proc_cgroup():
    assert cgroupns.unified_path("12:memory:/x\n1:name=systemd:/y\n") is None
    assert cgroupns.judge("cgroup:[4026531835]", HOST, "12:memory:/x\n")[0] is False


def _fs(tmp_path, link, mountinfo):
    (tmp_path / "proc/self/ns").mkdir(parents=True)
    (tmp_path / "proc/1").mkdir()
    os.symlink(link, tmp_path / "proc/self/ns/cgroup")  # dangling, like the real one's target
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    (tmp_path / "proc/1/cgroup").write_text("0::/init.scope\n")
    return FS(Paths(**paths_for(tmp_path)))


def test_check_row(tmp_path):
    rows, _ = run(_fs(tmp_path / "a", "cgroup:[4026532177]", PRIVATE))
    [row] = [r for r in rows if r.name == "cgroup namespace"]
    assert not row.ok and row.detail.startswith("private (/proc/self/ns/cgroup is cgroup:[4026532177]")
    rows, _ = run(_fs(tmp_path / "b", "cgroup:[4026531835]", HOST))
    [row] = [r for r in rows if r.name == "cgroup namespace"]
    assert row.ok and row.detail == "the host's (initial) cgroup namespace"
