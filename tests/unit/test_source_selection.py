"""Source selection: BPF + lru_gen, else lru_gen alone, else /proc; overridable; every choice explained."""

import shutil
from pathlib import Path

import pytest

from mglrud.config import Paths
from mglrud.fs import FS
from mglrud.sources.selection import AUTO, SOURCES, Probe, choose, probe_all
from synth import lru_gen_text

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "procfs" / "pid"


def probes(bpf=False, lru_gen=False, procfs=True):
    return {"bpf": Probe("bpf", bpf, "bpf detail"), "lru_gen": Probe("lru_gen", lru_gen, "lru detail"),
            "procfs": Probe("procfs", procfs, "procfs detail")}


@pytest.mark.parametrize("found, active", [
    (dict(bpf=True, lru_gen=True), ("bpf", "lru_gen")),
    (dict(bpf=False, lru_gen=True), ("lru_gen",)),
    (dict(bpf=True, lru_gen=False), ("procfs",)),  # BPF rides on lru_gen's aging
    (dict(bpf=False, lru_gen=False), ("procfs",)),
    (dict(bpf=False, lru_gen=False, procfs=False), ()),
])
def test_auto(found, active):
    c = choose(AUTO, probes(**found))
    assert c.active == active
    assert [s for s, _ in c.why] == list(SOURCES)
    for s in SOURCES:
        assert c.reason(s).startswith("used" if s in active else "not used")


def test_auto_explains_why_procfs_is_left_out_beside_lru_gen():
    assert "clear_refs" in choose(AUTO, probes(lru_gen=True)).reason("procfs")
    assert choose(AUTO, probes()).reason("lru_gen") == "not used: lru detail"


def test_explicit_sources_run_even_when_down_and_nothing_else_does():
    c = choose(("lru_gen", "procfs"), probes(bpf=True, lru_gen=False))
    assert c.active == ("lru_gen", "procfs")
    assert c.reason("lru_gen") == "configured, but cannot run: lru detail"
    assert c.reason("bpf") == "not in the configured sources"


def tree(tmp_path, lru_gen_text=None, smaps=True, clear_refs=True):
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    if smaps:
        shutil.copy(FIX / "smaps", proc / "smaps")
    if clear_refs:
        (proc / "clear_refs").write_text("")
    if lru_gen_text is not None:
        (tmp_path / "debugfs").mkdir()
        (tmp_path / "debugfs" / "lru_gen").write_text(lru_gen_text)
    return FS(Paths(procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "sys"), debugfs=str(tmp_path / "debugfs"),
                    tracefs=str(tmp_path / "tracing")))


def test_probes_on_a_kernel_without_mglrud(tmp_path):
    p = probe_all(tree(tmp_path))
    assert not p["lru_gen"].usable and "CONFIG_LRU_GEN" in p["lru_gen"].detail
    assert not p["bpf"].usable and "tracepoint" in p["bpf"].detail
    assert p["procfs"].usable


def test_probe_procfs_without_clear_refs(tmp_path):
    p = probe_all(tree(tmp_path, clear_refs=False))["procfs"]
    assert not p.usable and "clear_refs missing" in p.detail


def test_probe_lru_gen_readable(tmp_path):
    p = probe_all(tree(tmp_path, lru_gen_text=lru_gen_text([(1, "/", [(0, [(0, 10, 1, 2)])])])))
    assert p["lru_gen"].usable and "1 memcgs" in p["lru_gen"].detail
