"""The kernel-write audit (issue 18, "Tests that cannot fail"): every write mglrud makes to the
kernel -- lru_gen commands, clear_refs, BPF map updates and deletes -- passes one seam
(mglrud/kernelwrite.py), and tests/unit/conftest.py holds the session's record to its own rule.

Before: the audit wrapped Writer.write, saw only lru_gen commands that had already passed the
writer's regex and asserted they start with "+ " (always true), and never saw clear_refs or a map
write. Here: the audit sees each kind, and it fails when a writer's own check is loosened.
"""

import pytest
from conftest import KERNEL_WRITES, write_violations

from mglrud import bpfsys, fs, kernelwrite
from mglrud.config import Paths
from mglrud.sources import procfs_io
from mglrud.targets import stat_start


def _since(n: int) -> list:
    return KERNEL_WRITES[n:]


def test_the_audit_sees_an_lru_gen_command_from_any_writer():
    n = len(KERNEL_WRITES)
    fs.RecordingWriter().write("+ 7 0 12 1 0")
    fs.DryRunWriter().write("+ 7 1 12 0 1")
    assert [(w.kind, w.data) for w in _since(n)] == [("lru_gen", b"+ 7 0 12 1 0"), ("lru_gen", b"+ 7 1 12 0 1")]


def test_the_audit_sees_a_clear_refs_write(tmp_path):
    stat = open("/proc/self/stat").read()
    d = tmp_path / "proc" / "4242"
    d.mkdir(parents=True)
    (d / "stat").write_text(stat)
    (d / "clear_refs").write_text("")
    n = len(KERNEL_WRITES)
    procfs_io._clear_refs(fs.FS(Paths(procfs=str(tmp_path / "proc"))), 4242, stat_start(stat))
    assert (d / "clear_refs").read_text() == "1"
    assert [(w.kind, w.target, w.data) for w in _since(n)] == [("clear_refs", str(d / "clear_refs"), b"1")]


def test_the_audit_sees_map_updates_and_deletes_before_the_system_call(monkeypatch):
    calls = []
    monkeypatch.setattr(bpfsys, "_sys_bpf", lambda cmd, attr: calls.append(cmd) or 0)  # no kernel here
    m = object.__new__(bpfsys.Map)
    m.fd, m.key_size, m.value_size, m.slot, m.ncpus = 99, 4, 4, 4, 1
    n = len(KERNEL_WRITES)
    m.update(b"\x01\x00\x00\x00", b"\x01\x00\x00\x00")
    assert m.delete(b"\x01\x00\x00\x00")
    assert calls == [bpfsys.MAP_UPDATE_ELEM, bpfsys.MAP_DELETE_ELEM]
    assert [(w.kind, w.target) for w in _since(n)] == [("bpf_map_update", "map fd 99"), ("bpf_map_delete", "map fd 99")]


def test_the_audit_fails_when_a_writers_check_is_loosened(monkeypatch):
    """An eviction that a loosened regex let through reaches the seam, and the audit's own rule
    names it: the audit does not merely repeat the writer's check."""
    import re

    seen = []
    kernelwrite.OBSERVERS.append(seen.append)
    try:
        monkeypatch.setattr(fs, "_AGING_COMMAND", re.compile(r".*"))
        fs.RecordingWriter().write("- 7 0 12")
    finally:
        kernelwrite.OBSERVERS.remove(seen.append)
        # take it out of the session's record too: it was put there on purpose
        KERNEL_WRITES[:] = [w for w in KERNEL_WRITES if w not in seen]
    assert write_violations(seen) == seen and seen[0].data == b"- 7 0 12"
    assert write_violations([kernelwrite.Write("clear_refs", "/proc/1/clear_refs", b"4")])
    assert write_violations([kernelwrite.Write("clear_refs", "/proc/1/stat", b"1")])
    assert write_violations([kernelwrite.Write("sysctl", "/proc/sys/vm/drop_caches", b"3")])
    assert not write_violations([kernelwrite.Write("clear_refs", "/proc/1/clear_refs", b"1")])


def test_an_eviction_never_reaches_the_seam():
    n = len(KERNEL_WRITES)
    with pytest.raises(fs.RefusedCommand):
        fs.RecordingWriter().write("- 7 0 12")
    assert _since(n) == []
