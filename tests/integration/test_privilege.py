"""An unprivileged user gets nothing through mglrud that /proc/PID/maps refuses them (issue 18 item 6).

A root-owned child maps a file at a telling path; mglrud (here: its /proc source and HTTP
server in this process, as root) reads the child's smaps, and the BPF part is the replay of
the captured VM dumps (region addresses, bucket ranges). A client run as uid 65534 (setpriv)
reads /snapshot.json and /metrics over TCP on 127.0.0.1 and tries the unix socket: no
mapping address (hex or decimal), no file path, no BPF region or bucket range may reach it,
and the socket must refuse it (its directory is 0700 and the socket 0600, root's). Root, on the socket, gets all of them (or the test would
prove nothing).
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mglrud.collectors import Published
from mglrud.config import Paths
from mglrud.fs import FS
from mglrud.http import serve
from mglrud.sources.procfs import ProcfsSource
from mglrud.model.procfs import ProcfsData
from tests.bpf_replay import replayed_snapshot

SETPRIV = shutil.which("setpriv")
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                                reason="needs root and setpriv (util-linux) to act as uid 65534")

CLIENT = r"""
import json, socket, sys, urllib.request
base, sock = sys.argv[1], sys.argv[2]
out = {}
for path in ("/snapshot.json", "/metrics"):
    with urllib.request.urlopen(base + path, timeout=20) as r:
        out[path] = r.read().decode()
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    out["socket"] = "connected"
except OSError as e:
    out["socket"] = type(e).__name__
print(json.dumps(out))
"""


def _as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def secret_child(tmp_path):
    """A root process with a file mapping at a path nobody may learn."""
    secret = tmp_path / "secret-dir-7f3a" / "payroll-keys.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"x" * (1 << 20))
    code = ("import mmap, sys, time\n"
            f"f = open({str(secret)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
            "m[0]; m[1 << 19]; print('up', flush=True); time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"
        yield child.pid, str(secret)
    finally:
        child.kill()
        child.wait()


def _snapshot(tmp_path, pid):
    from mglrud.config import Target
    src = ProcfsSource(FS(Paths()), clear_refs=False, read_numa=False, exclude=())
    t = Target(name="w", kind="pid", value=pid, interval=60.0, can_swap=True, force_scan=True)
    data: ProcfsData = src.read([t], clear=False)
    assert data.processes and data.processes[0].pid == pid, data.targets
    snap, _ = replayed_snapshot(tmp_path / "replay", taken_at=time.time())
    return dataclasses.replace(snap, procfs=data)


def _secrets(pid, secret, snap):
    """Every string that would tell nobody something /proc/PID/maps refuses them."""
    words = {secret, os.path.dirname(secret)}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        for a in (lo, hi):
            words |= {f"{a:#x}", f"{a:x}", str(a)}
        parts = line.split(None, 5)
        if len(parts) > 5 and parts[5].startswith("/"):
            words.add(parts[5].strip())
    for t in snap.hotness.targets:
        for r in t.regions:
            if r.start:
                words.add(str(r.start))
        for b in t.buckets:
            for _, s, e in b.ranges:
                words |= {str(s), str(e)}
    return words


def test_an_unprivileged_user_gets_nothing_that_proc_maps_refuses(tmp_path, secret_child):
    pid, secret = secret_child
    refused = _as_nobody("cat", f"/proc/{pid}/maps")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr  # the kernel's answer

    snap = _snapshot(tmp_path, pid)
    published = Published(snap)
    run = tmp_path / "run"
    tcp, _ = serve("127.0.0.1", 0, published)
    unix, _ = serve(str(run / "mglrud.sock"), 0, published)
    try:
        got = _as_nobody(sys.executable, "-c", CLIENT, f"http://127.0.0.1:{tcp.server_port}", str(run / "mglrud.sock"))
        assert got.returncode == 0, got.stderr
        out = json.loads(got.stdout)
        # root, on the socket, gets the full view: the secrets are really in the snapshot
        from mglrud.client import _get_unix
        full = _get_unix(str(run / "mglrud.sock"), 10).decode()
    finally:
        for s in (tcp, unix):
            s.shutdown()
            s.server_close()

    words = _secrets(pid, secret, snap)
    assert secret in full and f"{snap.procfs.processes[0].mappings[0].start:#x}" in full
    leaked = sorted(w for w in words for body in (out["/snapshot.json"], out["/metrics"]) if w in body)
    assert leaked == [], leaked[:10]
    doc = json.loads(out["/snapshot.json"])
    assert doc["redacted"] is True
    assert out["socket"] == "PermissionError"
    # still useful: the target's figures, the mapping classes, the per-target BPF metrics
    [p] = doc["procfs"]["processes"]
    assert p["pid"] == pid and "[file]" in {m["name"] for m in p["mappings"]}
    assert 'mapping="[file]"' in out["/metrics"] and "mglrud_target_access_offset_ratio_bucket{" in out["/metrics"]
    assert not (run / "mglrud.sock").exists()  # removed by server_close
    assert oct((run).stat().st_mode & 0o777) == "0o700"
