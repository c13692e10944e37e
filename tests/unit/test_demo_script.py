"""scripts/demo (make demo) hands its options to demo/guest.py in the guest through vm-run.sh --exec.

Run against a copy of the script beside a stand-in kernel-patch/vm-run.sh that records its
arguments, so no guest boots."""

import shlex
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def guest_argv(tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo", tmp_path / "scripts" / "demo")
    vm = tmp_path / "kernel-patch" / "vm-run.sh"
    vm.parent.mkdir()
    vm.write_text('#!/bin/bash\nwhile [ $# -gt 0 ]; do [ "$1" = --exec ] && printf %s "$2" > "$(dirname "$0")/exec"; '
                  'shift; done\n')
    vm.chmod(0o755)
    r = subprocess.run([str(tmp_path / "scripts" / "demo"), "--out", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return shlex.split((vm.parent / "exec").read_text())


def test_no_options_pass_no_empty_argument(tmp_path):
    # `make demo` with no ARGS: guest.py was given '' and refused it ("unrecognized arguments: ")
    assert guest_argv(tmp_path) == ["/usr/bin/python3", "demo/guest.py", "--out", str(tmp_path / "out")]


def test_options_reach_guest_py_quoted(tmp_path):
    argv = guest_argv(tmp_path, "--keys", "12000", "--memcached-opts", "-o no_lru_crawler")
    assert argv[4:] == ["--keys", "12000", "--memcached-opts", "-o no_lru_crawler"], argv
