"""bench/kernel_cost.py's pure parts: the /proc/lock_stat reader and the summary's ratios."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernel_cost.py"
spec = importlib.util.spec_from_file_location("kernel_cost", BENCH)
kc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kc)

LOCK_STAT = """lock_stat version 0.4
-------------------------------------------------------------------------------------------
                              class name    con-bounces    contentions   waittime-min   waittime-max waittime-total   waittime-avg    acq-bounces   acquisitions   holdtime-min   holdtime-max holdtime-total   holdtime-avg
-------------------------------------------------------------------------------------------
                      ptlock_ptr(ptdesc):             1              2           0.50           0.70           1.20           0.60             12            640           0.10          10.67         163.07           0.25
                      -------------------
                      ptlock_ptr(ptdesc)              2          [<ffffffff81234567>] walk_pte_range+0x1a/0x400
                        &mm->mmap_lock-R:             0              0           0.00           0.00           0.00           0.00             22            222           0.09          10.67         163.07           0.73
"""


def test_lock_classes_reads_the_page_table_lock_class_only():
    got = kc.lock_classes(LOCK_STAT)
    assert list(got) == ["ptlock_ptr(ptdesc)"]
    c = got["ptlock_ptr(ptdesc)"]
    assert (c["contentions"], c["acquisitions"], c["holdtime-max"], c["holdtime-total"]) == (2, 640, 10.67, 163.07)


def run(tmp_path, name, label, patched, times):
    d = tmp_path / name
    d.mkdir()
    configs = {"off": times} if not patched else {"off": times, "counting": [t * 2 for t in times]}
    (d / "kernel_cost.json").write_text(json.dumps({
        "label": label, "release": "6.12.117", "patched": patched, "blocks": 1, "passes": len(times),
        "workloads": {"dense": {"young": 1000, "tables": 10, "vmas": 1}},
        "times_ns": {"dense": configs}, "errors": {"dense": {c: [] for c in configs}},
        "counted_pages_per_block": {}, "thp_kb": 0}))
    return str(d)


def test_summary_divides_by_the_unpatched_median_of_the_same_clock(tmp_path, capsys):
    dirs = [run(tmp_path, "a", "unpatched-icount1", False, [1000, 1000, 5000]),
            run(tmp_path, "b", "patched-icount1", True, [1010, 1010, 1]),
            run(tmp_path, "c", "unpatched-wall", False, [3000]),
            run(tmp_path, "d", "patched-wall", True, [6000])]
    kc.summary(type("A", (), {"dirs": dirs})())
    rows = {" ".join(line.split()[1:3]): line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("dense")}
    # icount: median 1010 / 1000; + 10 ns over 1000 young entries and 10 tables
    assert rows["patched-icount1 off"][-3:] == ["1.0100", "0.0", "1"]
    assert rows["patched-icount1 counting"][-3:] == ["2.0200", "1.0", "102"]
    # wall is divided by the wall baseline, not by the icount one
    assert rows["patched-wall off"][-3:] == ["2.0000", "3.0", "300"]
    assert rows["unpatched-wall off"][-3:] == ["1.0000", "0.0", "0"]


def test_run_boots_each_kernel_from_its_own_cache_and_passes_configs(tmp_path, monkeypatch):
    """`run` alternates the kernels, each with its own MGLRUD_CACHE whatever the caller's
    environment says, and hands --configs, --workloads and --thp-mib to the guest."""
    calls = []

    def fake_run(cmd, env):
        calls.append((cmd, env["MGLRUD_CACHE"]))

        class Done:
            returncode = 0
        return Done()

    monkeypatch.setenv("MGLRUD_CACHE", "/elsewhere")
    monkeypatch.setattr(kc.subprocess, "run", fake_run)
    monkeypatch.setattr(kc, "summary", lambda args: 0)
    args = kc.argparse.Namespace(out=str(tmp_path), boots=3, icount=1, blocks=1, passes=2, timeout=60,
                                 configs="off", cache="/var/cache/v3", unpatched_cache="/var/cache/u",
                                 first="patched", workloads="thp", thp_mib=512)
    assert kc.run(args) == 0
    variants = [c[c.index("--variant") + 1] for c, _ in calls]
    assert variants == ["default", "unpatched", "default"]
    assert [cache for _, cache in calls] == ["/var/cache/v3", "/var/cache/u", "/var/cache/v3"]
    guest = calls[0][0][-1]
    assert "--configs off" in guest and "--label patched-icount1" in guest
    assert "--workloads thp --thp-mib 512" in guest
    assert calls[0][0][calls[0][0].index("--qemu-opts") + 1] == "-icount shift=1,sleep=off"
