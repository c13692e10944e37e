"""Same output, before and after a performance change: one digest of what mglrud produces over a
scenario, to compare between two trees (issue 19's byte-identical rule).

The scenario: a SYNTHETIC lru_gen (tests/unit/synth.py) of N memcgs x 2 nodes, read by the real
Engine (dry run: RecordingWriter) over C cycles with a fixed clock; between cycles the ages grow,
some memcgs' page counts change, the aged memcgs' max_seq moves on (as the kernel's does), and
at the middle cycle memcgs go and others come. Per cycle: the snapshot JSON (to_json, also with a
target query), /metrics in text and OpenMetrics (plain, and gzip decompressed: its bytes depend on
the level and the stream's flushes), and the aging commands written.

  /usr/bin/python3 bench/same_output.py ROOT [--memcgs 600] [--cycles 8]   # prints one digest per cycle

Run it for both trees (`git archive REV | tar -x -C DIR`) and compare the lines.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
import tempfile
from pathlib import Path

CONFIG = """
aging: {interval: 1m, dry_run: true}
snapshot: {interval: 10s}
targets: [{name: services, memcg: "/system.slice/**"}, {name: pods, memcg: "/kubepods.slice/**"}]
"""


def rows(memcgs: int, cycle: int, seq_bump: dict[int, int]):
    out = []
    for i in range(memcgs):
        if cycle >= 4 and i % 10 == 3:
            continue  # gone at the middle cycle
        path = f"/system.slice/service-{i:04d}.service" if i % 2 else f"/kubepods.slice/pod-{i:04d}/ctr"
        bump = seq_bump.get(i + 2, 0)
        nodes = []
        for n in (0, 1):
            gens = []
            for g in range(4):
                age = 1000 * (4 - g) + i + 10_000 * cycle
                anon = 100 * g + i + n + (cycle * 7 if i % 3 == 0 else 0)
                gens.append((10 + g + bump, age, anon, 50 * g + i))
            nodes.append((n, gens))
        out.append((i + 2, path, nodes))
    if cycle >= 4:  # new memcgs, new ids
        for j in range(memcgs // 10):
            out.append((memcgs + 100 + j, f"/kubepods.slice/pod-new-{j}/ctr",
                        [(n, [(5 + g, 500 * (4 - g) + j, j + g, g) for g in range(4)]) for n in (0, 1)]))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--memcgs", type=int, default=600)
    p.add_argument("--cycles", type=int, default=8)
    a = p.parse_args()
    sys.path.insert(0, a.root)
    sys.path.insert(0, str(Path(a.root) / "tests" / "unit"))
    from synth import lru_gen_text
    from mglrud import snapshot_json
    from mglrud.collectors import Published
    from mglrud.config import loads
    from mglrud.cycle import Engine
    from mglrud.exposition import Exposition
    from mglrud.fs import RecordingWriter

    tmp = Path(tempfile.mkdtemp(prefix="mglrud-same-"))
    (tmp / "debugfs").mkdir()
    lru = tmp / "debugfs" / "lru_gen"

    class Clock:
        t = 1000.0

        def __call__(self):
            return self.t

    clock = Clock()
    bump: dict[int, int] = {}
    lru.write_text(lru_gen_text(rows(a.memcgs, 0, bump)))
    eng = Engine(loads(CONFIG + f"paths: {{debugfs: '{tmp / 'debugfs'}', procfs: '{tmp / 'proc'}'}}\n"),
                 writer=RecordingWriter(), clock=clock, wall=lambda: 1.7e9 + clock.t)
    done = 0
    for c in range(a.cycles):
        lru.write_text(lru_gen_text(rows(a.memcgs, c, bump)))
        snap = eng.cycle(age=c > 0)
        h = hashlib.sha256()
        h.update(snapshot_json.to_json(snap).encode())
        h.update(snapshot_json.to_json(snap, snapshot_json.Query(target="pods")).encode())
        for accept in (None, "application/openmetrics-text; version=1.0.0"):
            for enc in (None, "gzip"):
                # a fresh cache each: a gzip scrape with no plain scraper in view is deflated
                # as it is rendered (exposition.render_deflated()), not from a kept text
                exp = Exposition(Published(snap), wall=lambda: snap.taken_at + 1)
                body = exp.metrics(accept, enc)[0]
                # gzip: what it decompresses to (one member); its bytes depend on the level and
                # on where the deflate stream is flushed, not part of the output's meaning
                h.update(gzip.decompress(body) if enc else body)
        cmds = eng.writer.commands[done:]
        done = len(eng.writer.commands)
        h.update("\n".join(cmds).encode())
        for cmd in cmds:  # the kernel's answer to an aging command: a new generation
            memcg_id = int(cmd.split()[1])
            bump[memcg_id] = bump.get(memcg_id, 0) + 1
        print(f"cycle {c}: {len(snap.lruvecs)} lruvecs, {len(cmds)} commands, {h.hexdigest()[:32]}")
        clock.t += 10.0
    return 0


if __name__ == "__main__":
    sys.exit(main())
