"""Capture the BPF hotness source's raw inputs in the guest, for host unit tests.

Runs mglrud's own Program (bpf/hotness.bpf.c through bcc) against a
tests/vm/workload.py process (64 MiB anonymous, first 16 MiB touched in a loop)
in a memcg of its own, ages that memcg a few times, and after each aging writes
the program's map dump (exactly what mglrud reads each cycle) to
OUT/dump-N.json. It also writes the workload's smaps and pagemap and the
node/memory-block table, so residency parsing is tested on real data.

Usage (host): kernel-patch/vm-run.sh --out DIR --exec \
    '/usr/bin/python3 tests/vm/capture_bpf_fixtures.py DIR [SUBDIR]'
then copy DIR/bpf/* to tests/fixtures/bpf/. The program attaches where the daemon's
would (the range event when the kernel has it); tests/fixtures/bpf/ holds a capture
on the per-entry event (before the range event existed), tests/fixtures/bpf/range/
one on the range event.
"""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

import lrugen  # noqa: E402

from mglrud.config import Bpf, Paths  # noqa: E402
from mglrud.fs import FS  # noqa: E402
from mglrud.sources.bpf_hotness import Program  # noqa: E402

SIZE, HOT = 64 << 20, 16 << 20


def main() -> int:
    out = Path(sys.argv[1]) / "bpf" / (sys.argv[2] if len(sys.argv) > 2 else "")
    out.mkdir(parents=True, exist_ok=True)
    cg = Path("/sys/fs/cgroup/mglrud-capture")
    cg.mkdir(exist_ok=True)
    here = Path(__file__).parent
    w = subprocess.Popen([sys.executable, str(here / "workload.py"), "--size", f"{SIZE >> 20}M",
                          "--hot", f"{HOT >> 20}M", "--cgroup", str(cg), "--seconds", "300"],
                         stdout=subprocess.PIPE, text=True)
    try:
        ready = w.stdout.readline().split()
        addr = int(ready[1], 16)
        mid = lrugen.memcg_id("/mglrud-capture")
        t0 = time.monotonic()
        prog = Program(Bpf(), FS(Paths()))
        print(f"compiled and attached in {time.monotonic() - t0:.1f}s", flush=True)
        prog.set_targets({w.pid}, {mid})
        meta = {"workload": {"pid": w.pid, "memcg_id": mid, "address": addr, "size": SIZE, "hot": HOT},
                "region_shift": 21, "page_size": os.sysconf("SC_PAGE_SIZE"), "event": prog.event}
        for i in range(4):
            lrugen.age(mid, 0)
            time.sleep(2)
            d = prog.dump()
            d["meta"] = meta
            d["meta"]["aging"] = i
            (out / f"dump-{i}.json").write_text(json.dumps(d, indent=None) + "\n")
            print(f"dump {i}: {len(d['heat'])} cells, stats {d['stats']}", flush=True)
        (out / "smaps").write_text(Path(f"/proc/{w.pid}/smaps").read_text())
        with open(f"/proc/{w.pid}/pagemap", "rb") as f:
            f.seek(addr // meta["page_size"] * 8)
            raw = f.read(SIZE // meta["page_size"] * 8)
        (out / "pagemap.json").write_text(json.dumps({
            "address": addr, "pages": SIZE // meta["page_size"],
            "entries_b64": base64.b64encode(raw).decode()}) + "\n")
        (out / "zoneinfo").write_text(Path("/proc/zoneinfo").read_text())
        prog.close()
    finally:
        w.kill()
        w.wait()
        time.sleep(0.5)
        try:
            cg.rmdir()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
