"""Capture real kernel output into a fixture tree (run inside the test guest).

Starts workloads with known patterns in three memcgs (hot anon, cold anon,
file-backed), pinned to CPUs so that with two NUMA nodes they land on both,
ages every memcg and node a few times through /sys/kernel/debug/lru_gen, then
copies what mglrud reads — lru_gen, lru_gen_full, the lru_gen sysfs knobs,
node lists, the test cgroups' files, the workloads' /proc files — into
OUT/<name>/{debugfs,sys,cgroup,proc}, the same roots as mglrud's `paths:`.

Usage (guest): python3 tests/vm/capture_fixtures.py OUT NAME
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import lrugen  # noqa: E402
from conftest import numa_nodes  # noqa: E402

CG = Path("/sys/fs/cgroup")


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.write_bytes(src.read_bytes())
    except OSError as e:  # some files are not readable in full; record why
        print(f"skip {src}: {e}")


def main() -> int:
    out, name = Path(sys.argv[1]), sys.argv[2]
    root = out / name
    shutil.rmtree(root, ignore_errors=True)
    parent = CG / "mglrud-fixture"
    parent.mkdir(exist_ok=True)
    (parent / "cgroup.subtree_control").write_text("+memory")
    nodes = numa_nodes()
    last_cpu = os.cpu_count() - 1
    specs = [  # (memcg, cpu, workload args)
        ("hot", 0, ["--size", "64M", "--hot", "64M"]),
        ("cold", last_cpu, ["--size", "96M"]),
        ("file", 0, ["--size", "32M", "--hot", "16M", "--file", "/usr/src/linux-source-6.12.tar.xz", "--readonly"]),
    ]
    procs = []
    for memcg, cpu, args in specs:
        path = parent / memcg
        path.mkdir(exist_ok=True)
        p = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, str(HERE / "workload.py"), *args, "--cgroup", str(path)],
            stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("ready"), memcg
        procs.append(p)
    ids = {memcg: lrugen.memcg_id(f"/mglrud-fixture/{memcg}") for memcg, _, _ in specs}
    for _ in range(3):
        time.sleep(2)
        for mid in ids.values():
            for node in nodes:
                lrugen.age(mid, node)
    time.sleep(1)

    copy(Path("/sys/kernel/debug/lru_gen"), root / "debugfs/lru_gen")
    copy(Path("/sys/kernel/debug/lru_gen_full"), root / "debugfs/lru_gen_full")
    for f in ("enabled", "min_ttl_ms"):
        copy(Path("/sys/kernel/mm/lru_gen") / f, root / "sys/kernel/mm/lru_gen" / f)
    for f in ("online", "possible", "has_memory", "has_cpu"):
        copy(Path("/sys/devices/system/node") / f, root / "sys/devices/system/node" / f)
    for f in ("cgroup.controllers", "cgroup.subtree_control"):
        copy(CG / f, root / "cgroup" / f)
    for d in [parent] + [parent / m for m, _, _ in specs]:
        for f in ("cgroup.procs", "memory.current", "memory.stat", "memory.numa_stat", "cgroup.controllers"):
            if (d / f).exists():
                copy(d / f, root / "cgroup" / d.relative_to(CG) / f)
    for p in procs:
        for f in ("cgroup", "comm", "cmdline", "status", "stat", "maps", "smaps", "smaps_rollup", "numa_maps"):
            copy(Path(f"/proc/{p.pid}/{f}"), root / f"proc/{p.pid}/{f}")
    copy(Path("/proc/meminfo"), root / "proc/meminfo")
    (root / "CAPTURED").write_text(
        f"captured by tests/vm/capture_fixtures.py in the test guest\n"
        f"kernel: {os.uname().release} {os.uname().version}\n"
        f"nodes: {nodes}\nmemcgs: {ids}\npids: {[p.pid for p in procs]}\n"
        f"workloads: {[(m, c, a) for m, c, a in specs]}\n")
    for p in procs:
        p.kill()
        p.wait()
    for m, _, _ in specs:
        for _ in range(50):
            try:
                (parent / m).rmdir()
                break
            except OSError:
                time.sleep(0.1)
    print(f"captured {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
