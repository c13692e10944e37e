"""Kernel faults injected through the filesystem seam: the engine keeps publishing, the metrics show
the fault, and it recovers when the fault clears.

- debugfs not mounted (lru_gen missing): mglrud_source_up{source="lru_gen"} 0,
  mglrud_aging_errors_total{reason="no_debugfs"} counts, back to 1 when it returns;
- lru_gen writes failing with EINVAL (after the one retry), ERANGE, EPERM: counted by reason,
  the read side stays up, aging succeeds again once the kernel accepts;
- a memcg removed between the read and the write: memcg_gone, and its series are gone
  from /metrics in the next snapshot;
- a target process exiting in the middle of its /proc read (reaped, or a zombie):
  mglrud_procfs_errors_total{reason="exited"}, no stale series after it is gone.

Writes go to a recording writer, which shows no eviction command was ever written.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import paths_for
from mglrud.collectors import Published, build_registry
from mglrud.config import from_dict
from mglrud.cycle import Engine
from mglrud.fs import FS, RecordingWriter
from synth import lru_gen_text

MEMCGS = [
    (1, "/", [(0, [(5, 9000, 100, 200), (6, 100, 1, 2)])]),
    (3, "/svc", [(0, [(7, 4000, 256, 0), (8, 10, 5, 0)])]),
    (4, "/batch", [(0, [(2, 8000, 64, 64), (3, 20, 1, 1)])]),
]


class FaultyWriter(RecordingWriter):
    """Records every command; while `errno` is set, every write fails with it."""

    def __init__(self):
        super().__init__()
        self.errno: int | None = None
        self.on_write = None  # called with the command before it "reaches the kernel"

    def _write(self, command: str) -> None:
        self.commands.append(command)
        if self.on_write:
            self.on_write(command)
        if self.errno:
            raise OSError(self.errno, os.strerror(self.errno))


class Rig:
    def __init__(self, root: Path, config: dict, writer=None, fs: FS | None = None):
        self.root = root
        self.writer = writer or FaultyWriter()
        self.now = 1000.0
        cfg = from_dict(config)
        self.engine = Engine(cfg, writer=self.writer, clock=lambda: self.now, wall=lambda: 1.7e9 + self.now)
        if fs is not None:
            self.engine.fs = fs  # the sources read through the fs the Engine hands them each cycle
        self.published = Published()
        self.registry = build_registry(self.published, wall=lambda: 1.7e9 + self.now)

    def cycle(self) -> dict[tuple, float]:
        """One aging cycle (everything due), published and scraped: {(sample name, labels...): value}."""
        self.now += 2
        self.published.publish(self.engine.cycle(age=True, age_all=True))
        out = {}
        for family in text_string_to_metric_families(generate_latest(self.registry).decode()):
            for s in family.samples:
                out[(s.name, *sorted(s.labels.items()))] = s.value
        return out


def _lru_root(tmp_path: Path, memcgs=MEMCGS) -> Path:
    (tmp_path / "debugfs").mkdir(parents=True, exist_ok=True)
    (tmp_path / "debugfs/lru_gen").write_text(lru_gen_text(memcgs))
    return tmp_path


def _config(root: Path, **extra) -> dict:
    return {"aging": {"interval": "1s"}, "metrics": {"cold_thresholds": ["1s"]},
            "targets": [{"name": "all", "memcg": "/**"}], "paths": paths_for(root), **extra}


def up(m) -> float:
    return m[("mglrud_source_up", ("source", "lru_gen"))]


def errors(m, reason: str) -> float:
    return m[("mglrud_aging_errors_total", ("reason", reason))]


def assert_only_aging(writer):
    assert writer.commands, "nothing was written at all"
    assert all(c.startswith("+ ") for c in writer.commands), writer.commands


@pytest.mark.parametrize("sources", ["auto", ["lru_gen"]])
def test_debugfs_not_mounted_then_mounted(tmp_path, sources):
    root = _lru_root(tmp_path)
    rig = Rig(root, _config(root, sources=sources))
    m = rig.cycle()
    assert up(m) == 1 and errors(m, "no_debugfs") == 0
    runs = m[("mglrud_aging_runs_total",)]

    shutil.move(root / "debugfs", root / "debugfs.unmounted")
    for i in range(1, 4):
        m = rig.cycle()
        assert up(m) == 0
        assert errors(m, "no_debugfs") == i
        assert m[("mglrud_aging_runs_total",)] == runs  # nothing aged, nothing written
        assert m[("mglrud_target_memcgs", ("target", "all"))] == 0
        assert not [k for k in m if k[0].startswith("mglrud_memcg_")], "no stale memcg series"

    shutil.move(root / "debugfs.unmounted", root / "debugfs")
    m = rig.cycle()
    assert up(m) == 1
    assert errors(m, "no_debugfs") == 3  # a counter: it never goes down
    assert m[("mglrud_aging_runs_total",)] > runs
    assert ("mglrud_memcg_resident_bytes", ("lru", "anon"), ("memcg", "/svc"), ("numa_node", "0")) in m
    assert_only_aging(rig.writer)


@pytest.mark.parametrize("code,reason", [(errno.EINVAL, "einval"), (errno.ERANGE, "erange"),
                                         (errno.EPERM, "eperm")])
def test_lru_gen_writes_failing(tmp_path, code, reason):
    root = _lru_root(tmp_path)
    rig = Rig(root, _config(root))
    rig.writer.errno = code
    for i in range(1, 3):
        m = rig.cycle()
        assert up(m) == 1, "reading still works: the source is up, its writes fail"
        assert errors(m, reason) == 3 * i  # three lruvecs per cycle
        assert sum(v for k, v in m.items() if k[0] == "mglrud_aging_errors_total") == 3 * i
        assert not [k for k in m if k[0] == "mglrud_last_successful_aging_timestamp_seconds"]
        assert ("mglrud_memcg_resident_bytes", ("lru", "anon"), ("memcg", "/svc"), ("numa_node", "0")) in m
    if code == errno.EINVAL:  # stale max_seq: re-read and retry once, then give up
        assert rig.writer.commands[:2] == ["+ 1 0 6 1 1", "+ 1 0 6 1 1"]
    else:
        assert rig.writer.commands[:2] == ["+ 1 0 6 1 1", "+ 3 0 8 1 1"]

    rig.writer.errno = None
    m = rig.cycle()
    assert errors(m, reason) == 6
    assert m[("mglrud_last_successful_aging_timestamp_seconds", ("target", "all"))] == 1.7e9 + rig.now
    assert_only_aging(rig.writer)


def test_memcg_removed_mid_cycle(tmp_path):
    root = _lru_root(tmp_path)
    rig = Rig(root, _config(root))
    m = rig.cycle()
    assert ("mglrud_memcg_resident_bytes", ("lru", "anon"), ("memcg", "/svc"), ("numa_node", "0")) in m

    def rmdir_svc(command: str) -> None:
        # The cgroup is removed after lru_gen was read and before the kernel runs the
        # write: the kernel no longer finds memcg 3 and answers EINVAL.
        if command.startswith("+ 3 "):
            (root / "debugfs/lru_gen").write_text(lru_gen_text([MEMCGS[0], MEMCGS[2]]))
            rig.writer.errno = errno.EINVAL
        else:
            rig.writer.errno = None

    rig.writer.on_write = rmdir_svc
    m = rig.cycle()
    assert errors(m, "memcg_gone") == 1
    assert errors(m, "einval") == 0, "a vanished memcg is not a stale max_seq"
    assert up(m) == 1
    assert not [k for k in m if ("memcg", "/svc") in k], "no series of the removed memcg"
    assert ("mglrud_memcg_resident_bytes", ("lru", "anon"), ("memcg", "/batch"), ("numa_node", "0")) in m

    rig.writer.on_write = None
    m = rig.cycle()
    assert errors(m, "memcg_gone") == 1
    assert m[("mglrud_target_memcgs", ("target", "all"))] == 2
    assert not [k for k in m if ("memcg", "/svc") in k]
    assert_only_aging(rig.writer)


def test_offline_memcgs_with_id_0_are_not_aged(tmp_path):
    """Seen in the systemd guest: exited oneshot services leave dying memcgs that lru_gen lists as
    `memcg 0 /system.slice/x.service` (their id given back). Aging them can only fail (EINVAL)."""
    dead = [(0, "/system.slice/a.service", [(0, [(2, 9000, 0, 30), (3, 10, 0, 1)])]),
            (0, "/system.slice/b.service", [(0, [(2, 9000, 0, 40), (3, 10, 0, 1)])])]
    root = _lru_root(tmp_path, MEMCGS + dead)
    rig = Rig(root, _config(root))
    for _ in range(3):
        m = rig.cycle()
    assert sum(v for k, v in m.items() if k[0] == "mglrud_aging_errors_total") == 0
    assert not [c for c in rig.writer.commands if c.startswith("+ 0 ")]
    assert not [k for k in m if ("memcg", "/system.slice/a.service") in k]
    assert m[("mglrud_target_memcgs", ("target", "all"))] == 3

    # One goes offline between the cycle's first read and its re-read after aging.
    def offline(command: str) -> None:
        if command.startswith("+ 4 "):
            (root / "debugfs/lru_gen").write_text(lru_gen_text(
                MEMCGS[:2] + [(0, "/batch", MEMCGS[2][2])] + dead))

    rig.writer.on_write = offline
    m = rig.cycle()
    assert not [k for k in m if ("memcg", "/batch") in k]
    rig.writer.on_write = None
    m = rig.cycle()
    assert m[("mglrud_target_memcgs", ("target", "all"))] == 2
    assert sum(v for k, v in m.items() if k[0] == "mglrud_aging_errors_total") == 0
    assert_only_aging(rig.writer)


def test_memcg_disabled_root_has_id_0(tmp_path):
    """cgroup_disable=memory: the root is `memcg 0` with no path, and it is aged as id 0."""
    root = _lru_root(tmp_path, [(0, "", [(0, [(5, 9000, 100, 200), (6, 100, 1, 2)])])])
    rig = Rig(root, _config(root))
    m = rig.cycle()
    assert rig.writer.commands == ["+ 0 0 6 1 1"]
    assert m[("mglrud_target_memcgs", ("target", "all"))] == 1


# ---------------------------------------------------------------- /proc: a target exits mid-read

class ExitingFS(FS):
    """The host's /proc, except that the victim is killed just as its smaps is opened."""

    def __init__(self, paths, victim: subprocess.Popen, reap: bool):
        super().__init__(paths)
        self.victim, self.reap, self.armed = victim, reap, False

    def proc(self, *parts):
        if self.armed and parts == (self.victim.pid, "smaps"):
            self.armed = False
            self.victim.send_signal(signal.SIGKILL)
            if self.reap:
                self.victim.wait(timeout=30)
            else:  # a zombie: /proc/PID stays, its mm is gone
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    stat = Path(f"/proc/{self.victim.pid}/stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] == "Z":
                        break
                    time.sleep(0.01)
        return super().proc(*parts)


def per_mapping(m, target: str) -> list:
    """Series of one target's mappings (the per-target idle-age histogram stays, by design)."""
    return [k for k in m if ("target", target) in k and any(name == "mapping" for name, _ in k[1:])]


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_target_exits_mid_read(tmp_path, reap):
    victim = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(8 << 20); "
                               "print('ready', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "ready"
        config = {"aging": {"interval": "1s"}, "metrics": {"cold_thresholds": ["1s"]},
                  "targets": [{"name": "victim", "pid": victim.pid}], "sources": ["procfs"]}
        cfg = from_dict(config)
        fs = ExitingFS(cfg.paths, victim, reap)
        rig = Rig(tmp_path, config, fs=fs)
        if "procfs" not in rig.engine.sources:
            pytest.skip("the /proc source cannot run here")
        m = rig.cycle()
        assert m[("mglrud_source_up", ("source", "procfs"))] == 1
        assert per_mapping(m, "victim")
        assert m[("mglrud_procfs_errors_total", ("reason", "exited"))] == 0

        fs.armed = True
        m = rig.cycle()
        assert not fs.armed, "the victim was killed mid-read"
        assert m[("mglrud_procfs_errors_total", ("reason", "exited"))] == 1
        assert m[("mglrud_source_up", ("source", "procfs"))] == 1
        assert not per_mapping(m, "victim"), "no stale series of the exited process"

        victim.wait(timeout=30)
        m = rig.cycle()  # one interval later: gone for good, and still no series
        assert not per_mapping(m, "victim")
        assert m[("mglrud_target_processes", ("target", "victim"))] == 0
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait(timeout=30)


def test_not_root_tracefs_and_debugfs_unreadable_keep_the_engine_running(tmp_path, monkeypatch):
    """As a user other than root, /sys/kernel/{tracing,debug} are 0700: stat() under them is EACCES.

    Seen for real in the guest (tests/vm/test_faults_vm.py): the source probe raised and
    `mglrud run` died with a traceback. Now each source is down with the reason.
    """
    import pathlib

    root = _lru_root(tmp_path)
    (root / "tracing/events/vmscan/mm_vmscan_lru_gen_young").mkdir(parents=True)
    closed = (str(root / "tracing") + "/", str(root / "debugfs") + "/")
    real_stat = pathlib.Path.stat

    def stat(self, *, follow_symlinks=True):
        if str(self).startswith(closed):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_stat(self, follow_symlinks=follow_symlinks)

    real_read = pathlib.Path.read_text

    def read_text(self, *a, **kw):
        if str(self).startswith(closed):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read(self, *a, **kw)

    real_bytes = pathlib.Path.read_bytes

    def read_bytes(self):
        if str(self).startswith(closed):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_bytes(self)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    rig = Rig(root, _config(root, sources=["bpf", "lru_gen"]))
    m = rig.cycle()
    assert up(m) == 0
    assert m[("mglrud_source_up", ("source", "bpf"))] == 0
    reasons = {s.name: s.reason for s in rig.published.current.sources}
    assert "run mglrud as root" in reasons["bpf"] and "run mglrud as root" in reasons["lru_gen"], reasons
