"""MGLRU compiled in but off (Debian 12's kernel): mglrud never switches it on unless `lru_gen.enable: true`.

Through the filesystem seam: a tree whose /sys/kernel/mm/lru_gen/enabled reads 0x0000 and whose
debugfs lru_gen lists memcgs (as 6.1 does with MGLRU off).
"""

import logging

import pytest

from mglrud.config import ConfigError, loads
from mglrud.fs import RecordingWriter
from mglrud.sources import lru_gen
from synth import lru_gen_text
from test_procfs_cycle import engine as procfs_engine


def off_tree(tmp_path, value="0x0000"):
    enabled = tmp_path / "sys/kernel/mm/lru_gen/enabled"
    enabled.parent.mkdir(parents=True)
    enabled.write_text(value + "\n")
    (tmp_path / "debugfs").mkdir()
    (tmp_path / "debugfs/lru_gen").write_text(lru_gen_text([(1, "/", [(0, [(0, 10, 1, 2)])])]))
    return enabled


def test_config_key(tmp_path):
    assert loads("targets: [{name: a, memcg: /}]").lru_gen.enable is False
    assert loads("lru_gen: {enable: true}").lru_gen.enable is True
    with pytest.raises(ConfigError, match=r"lru_gen\.enable"):
        loads("lru_gen: {enable: maybe}")
    with pytest.raises(ConfigError, match="lru_gen"):
        loads("lru_gen: {enabled: true}")


def test_off_by_default_stays_off_and_procfs_serves(tmp_path):
    from conftest import KERNEL_WRITES
    seen = len(KERNEL_WRITES)
    enabled = off_tree(tmp_path)
    eng, _, _ = procfs_engine(tmp_path)
    assert eng.choice.active == ("procfs",)
    why = eng.choice.reason("lru_gen")
    assert "MGLRU is compiled in but off" in why and "0x0000" in why and "lru_gen.enable: true" in why
    eng.cycle(age=False)
    snap = eng.cycle()
    assert [(s.name, s.up) for s in snap.sources] == [("lru_gen", False), ("procfs", True)]
    eng.configure(eng.config)  # a reload with the same config
    eng.cycle()
    assert enabled.read_text() == "0x0000\n"  # never written
    assert not [w for w in KERNEL_WRITES[seen:] if w.kind == "lru_gen_enabled"]
    assert isinstance(eng.writer, RecordingWriter) and eng.writer.commands == []  # and nothing aged


def test_enable_true_switches_it_on_once(tmp_path, caplog):
    enabled = off_tree(tmp_path)
    caplog.set_level(logging.WARNING, "mglrud.cycle")
    eng, _, _ = procfs_engine(tmp_path, "lru_gen: {enable: true}")
    # a regular file here: it now holds what was written; the kernel would read back 0x0007
    assert enabled.read_text() == "y"
    from conftest import KERNEL_WRITES
    assert [(w.kind, w.data) for w in KERNEL_WRITES if w.target == str(enabled)] == [("lru_gen_enabled", b"y")]
    assert "MGLRU was off (0x0000); wrote y to" in caplog.text
    assert eng.choice.active == ("lru_gen",)  # switched on before the sources were probed
    enabled.write_text("0x0007\n")
    eng.configure(eng.config)  # a reload: already on, not written again
    assert enabled.read_text() == "0x0007\n"
    assert eng.choice.active == ("lru_gen",)

def test_enable_true_under_dry_run_writes_nothing(tmp_path):
    enabled = off_tree(tmp_path)
    procfs_engine(tmp_path, "lru_gen: {enable: true}\naging: {dry_run: true}")
    assert enabled.read_text() == "0x0000\n"


def test_switch_on_without_config_lru_gen(tmp_path):
    from mglrud.config import Paths
    from mglrud.fs import FS
    fs = FS(Paths(sysfs=str(tmp_path / "sys")))
    assert "no CONFIG_LRU_GEN" in lru_gen.switch_on(fs)
    assert not (tmp_path / "sys").exists()



def test_check_names_the_probe_mode_without_compiling_while_off(tmp_path, monkeypatch):
    from mglrud import check
    from mglrud.config import Bpf, Paths
    from mglrud.fs import FS
    from mglrud.sources.base import Probe

    off_tree(tmp_path)
    fs = FS(Paths(sysfs=str(tmp_path / "sys"), debugfs=str(tmp_path / "debugfs")))
    monkeypatch.setattr(check.bpf_hotness, "probe", lambda fs: Probe("bpf", True, "fexit on ptep_test_and_clear_young"))

    def no_compile(*a, **kw):
        raise AssertionError("compiled while MGLRU is off")
    monkeypatch.setattr(check.bpf_hotness, "Program", no_compile)
    row = check.bpf_program(fs, Bpf())
    assert not row.ok
    assert row.detail == "not tried: MGLRU is off (lru_gen enabled above); once on, it would use: fexit on " \
                         "ptep_test_and_clear_young"
