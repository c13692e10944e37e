"""The kernel series' in-tree user (issue 17): tools/testing/selftests/mm/lru_gen_trace.c,
added by kernel-patch/0003, built from the patched source tree and run in the guest.

It checks vmscan:mm_vmscan_lru_gen_young_range through tracefs alone (no BPF): 64 pages
alone in a PTE table, five touched, one `pte` event with 64 scanned and 5 young; an
aging with nothing touched, 64 scanned and 0 young. kernel-patch/vm-run.sh hands the
patched source tree to the guest read-only and names it in MGLRUD_KSRC.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

SELFTEST = Path("tools/testing/selftests/mm/lru_gen_trace.c")


def test_the_lru_gen_trace_kselftest_passes(memcgs, tmp_path):
    ksrc = os.environ.get("MGLRUD_KSRC")
    if not ksrc:
        pytest.fail("MGLRUD_KSRC is not set: run through kernel-patch/vm-run.sh (a patched kernel variant)")
    src = Path(ksrc) / SELFTEST
    assert src.is_file(), f"{src} missing: the source tree lacks kernel-patch/'s selftest patch"
    binary = tmp_path / "lru_gen_trace"
    # kselftest.h is included as "../kselftest.h": compiled where it lies in the tree
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(src)], check=True)
    cgroup = memcgs("ks-lru-gen")

    def enter():  # runs in the child before exec: its pages are charged to its own memcg
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    run = subprocess.run([str(binary)], preexec_fn=enter, capture_output=True, text=True, timeout=300)
    print(run.stdout, run.stderr)
    # kselftest exit codes: 0 pass, 1 fail, 4 skip (a skip here is a failure: the guest has it all)
    assert run.returncode == 0, f"lru_gen_trace exited {run.returncode}:\n{run.stdout}{run.stderr}"
    # one event per node the memcg has (the selftest ages each), each 64 scanned
    assert re.search(r"^ok 1 touched table: \d+ events, 64 scanned, 5 young", run.stdout, re.M), run.stdout
    assert re.search(r"^ok 2 untouched table: \d+ events, 64 scanned, 0 young", run.stdout, re.M), run.stdout
