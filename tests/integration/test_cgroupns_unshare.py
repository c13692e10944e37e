"""`mglrud check` in a private cgroup namespace, made for real: a child cgroup, `unshare --cgroup`.

On the host, safely: the test makes its own child cgroup in the cgroup2 hierarchy,
moves only the short-lived shell it starts into it (the shell then execs unshare and
mglrud check, which only reads), and removes the cgroup afterwards. mglrud check
touches no process and, on this host (no MGLRU), ages nothing.
"""

import os
import shutil
import subprocess
import sys

import pytest

from mglrud import cgroupns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cgroup2_root() -> str:
    with open("/proc/self/mountinfo") as f:
        mounts = cgroupns.cgroup2_mounts(f.read())
    ours = [point for point, root in mounts if root == "/"]
    if os.geteuid() != 0 or not ours or not shutil.which("unshare"):
        pytest.fail("needs root, a cgroup2 mount of the whole hierarchy and unshare (util-linux)")
    return ours[0]


@pytest.fixture
def child_cgroup():
    path = os.path.join(_cgroup2_root(), f"mglrud-test-cgroupns-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)  # empty again: its only process has exited


def _check(prefix: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([*prefix, sys.executable, "-m", "mglrud", "check"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode in (0, 1), r.stderr  # 1: no lru_gen on this host; the table is printed either way
    [row] = [line for line in r.stdout.splitlines() if line.startswith("cgroup namespace")]
    return row


def test_private_namespace_is_named(child_cgroup):
    script = f'echo $$ > {child_cgroup}/cgroup.procs && exec "$@"'
    row = _check(["sh", "-c", script, "sh", "unshare", "--cgroup"])
    assert row.split()[2] == "no", row
    assert "private (/proc/self/ns/cgroup is cgroup:[" in row
    assert "has root /.." in row and "nsenter --cgroup=/proc/1/ns/cgroup" in row


def test_host_namespace_is_fine():
    if os.readlink("/proc/self/ns/cgroup") != cgroupns.INIT_CGROUP_NS:
        pytest.fail("the test runs in a private cgroup namespace itself: run it on the host")
    row = _check([])
    assert row.split()[2] == "ok" and row.endswith("the host's (initial) cgroup namespace"), row


def test_nsenter_back_into_the_hosts(child_cgroup):
    """What the DaemonSet does: from a private namespace, nsenter into the initial one, and check is content.
    The DaemonSet names PID 1 (the node's init, with hostPID); this test names its own process,
    which is in the initial namespace too, because a sandbox's PID 1 may not be openable."""
    script = f'echo $$ > {child_cgroup}/cgroup.procs && exec "$@"'
    host_ns = f"--cgroup=/proc/{os.getpid()}/ns/cgroup"
    row = _check(["sh", "-c", script, "sh", "unshare", "--cgroup", "nsenter", host_ns, "--"])
    assert row.split()[2] == "ok", row
