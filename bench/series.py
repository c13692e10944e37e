"""Series per host for each cardinality setting (docs/fleet.md), counted from the real collectors.

For each captured fixture tree (tests/fixtures/roots/vm-1node, vm-2node: real 6.12 lru_gen,
sysfs and cgroupfs from the test guest) and each setting below, the real Engine reads the tree
(dry run, no aging) with the built-in default config plus that setting, and the real
collectors render /metrics; a series is one sample line. Then one SYNTHETIC host (--memcgs
memcgs on 2 nodes, a third of them empty, printed in the kernel's lru_gen format by
tests/unit/synth.py and read by the real parser) for the 10k-memcg recipe.

Writes bench/results/series.txt.

  /usr/bin/python3 bench/series.py [--memcgs 10000]
"""

from __future__ import annotations

import argparse
import os
import datetime
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))
from synth import lru_gen_text  # noqa: E402

from prometheus_client import generate_latest  # noqa: E402

from mglrud.collectors import Published, build_registry  # noqa: E402
from mglrud.config import loads  # noqa: E402
from mglrud.cycle import Engine  # noqa: E402
from mglrud.fs import RecordingWriter  # noqa: E402

ROOTS = ("vm-1node", "vm-2node")
# (label, the `metrics:` keys added to the built-in defaults)
SETTINGS = (
    ("default (empty memcgs left out)", ""),
    ("metrics.keep_empty_memcgs: true (the behaviour before)", "keep_empty_memcgs: true"),
    ("metrics.disable: [resident]", "disable: [resident]"),
    ("metrics.disable: [generation]", "disable: [generation]"),
    ("metrics.disable: [generation_age]", "disable: [generation_age]"),
    ("metrics.disable: [cold]", "disable: [cold]"),
    ("metrics.disable: [idle_age]", "disable: [idle_age]"),
    ("metrics.disable: [generation, generation_age, idle_age]", "disable: [generation, generation_age, idle_age]"),
    ("metrics.max_memcgs_per_target: 2", "max_memcgs_per_target: 2"),
)
RECIPE = "disable: [generation, generation_age, idle_age], max_memcgs_per_target: 200"
SYNTH_SETTINGS = (
    ("default (empty memcgs left out)", ""),
    ("metrics.keep_empty_memcgs: true (the behaviour before)", "keep_empty_memcgs: true"),
    ("metrics.disable: [generation, generation_age, idle_age]", "disable: [generation, generation_age, idle_age]"),
    ("recipe: " + RECIPE, RECIPE),
)


def count(paths: dict[str, str], metrics: str) -> tuple[int, int, int]:
    """(series in /metrics, of which mglrud_memcg_*, memcgs exported) for one setting."""
    cfg = loads("metrics: {%s}\npaths: {%s}\n" % (metrics, ", ".join(f"{k}: '{v}'" for k, v in paths.items())))
    snap = Engine(cfg, writer=RecordingWriter()).cycle(age=False)
    text = generate_latest(build_registry(Published(snap), wall=lambda: snap.taken_at)).decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    return (len(samples), sum(1 for s in samples if s.startswith("mglrud_memcg_")),
            len({h.memcg_path for h in snap.lruvecs}))


def paths_for(root: Path) -> dict[str, str]:
    return {"procfs": str(root / "proc"), "sysfs": str(root / "sys"), "debugfs": str(root / "debugfs"),
            "cgroupfs": str(root / "cgroup"), "tracefs": str(root / "tracing")}


def synthetic(tmp: Path, memcgs: int) -> dict[str, str]:
    rows = []
    for i in range(memcgs):
        path = f"/system.slice/service-{i:05d}.service" if i % 2 else f"/kubepods.slice/pod-{i:05d}/ctr"
        empty = i % 3 == 0
        nodes = [(n, [(10 + g, 1000 * (4 - g) + i, 0 if empty else 100 * g + i + n, 0 if empty else 50 * g + i)
                      for g in range(4)]) for n in (0, 1)]
        rows.append((i + 2, path, nodes))
    (tmp / "debugfs").mkdir()
    (tmp / "debugfs" / "lru_gen").write_text(lru_gen_text(rows))
    return paths_for(tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memcgs", type=int, default=10000)
    args = ap.parse_args()
    out = [f"# bench/series.py — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
           f"# command: /usr/bin/python3 bench/series.py --memcgs {args.memcgs}",
           f"# kernel {platform.release()}; built-in default config (targets /**, 3 cold thresholds, "
           f"idle_age_buckets = the thresholds) plus the setting; series = sample lines of /metrics", ""]
    for name in ROOTS:
        with tempfile.TemporaryDirectory(prefix="mglrud-series-") as tmp:
            root = Path(tmp) / name
            shutil.copytree(REPO / "tests" / "fixtures" / "roots" / name, root, symlinks=True)
            out += [f"## captured tests/fixtures/roots/{name}", "",
                    "| setting | series per host | of which mglrud_memcg_* | memcgs exported |", "|---|---|---|---|"]
            for label, metrics in SETTINGS:
                total, memcg, n = count(paths_for(root), metrics)
                out.append(f"| {label} | {total} | {memcg} | {n} |")
            out.append("")
    with tempfile.TemporaryDirectory(prefix="mglrud-series-") as tmp:
        paths = synthetic(Path(tmp), args.memcgs)
        out += [f"## SYNTHETIC: {args.memcgs} memcgs x 2 nodes x 4 generations, one in three empty "
                f"(kernel lru_gen format, real parser)", "",
                "| setting | series per host | of which mglrud_memcg_* | memcgs exported | cycle + render, wall s |",
                "|---|---|---|---|---|"]
        for label, metrics in SYNTH_SETTINGS:
            t0 = time.perf_counter()
            total, memcg, n = count(paths, metrics)
            out.append(f"| {label} | {total} | {memcg} | {n} | {time.perf_counter() - t0:.1f} |")
        out.append("")
    out.append(f"cycle + render = one Engine cycle (read and parse lru_gen, resolve targets) plus one "
               f"generate_latest; wall time on a shared machine, load average at end "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = "\n".join(out)
    print(text)
    dest = REPO / "bench" / "results" / "series.txt"
    dest.write_text(text)
    print(f"wrote {dest.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
