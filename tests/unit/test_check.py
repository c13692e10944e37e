"""check.py: the preflight table and its exit status, on made-up trees (what is present or not)."""

import pytest

from conftest import FIXTURES, captured_roots, copy_root, paths_for
from mglrud import cli
from mglrud.check import format_table, run
from mglrud.config import Paths
from mglrud.fs import FS
from synth import lru_gen_text


def _tree(tmp_path, enabled="0x0007", lru_gen=True, tracepoint=False, cgroup=True):
    if enabled is not None:
        (tmp_path / "sys/kernel/mm/lru_gen").mkdir(parents=True)
        (tmp_path / "sys/kernel/mm/lru_gen/enabled").write_text(enabled + "\n")
    (tmp_path / "debugfs").mkdir()
    if lru_gen:
        (tmp_path / "debugfs/lru_gen").write_text(lru_gen_text([(1, "/", [(0, [(3, 10, 1, 1)])])]))
    (tmp_path / "tracing/events").mkdir(parents=True)
    if tracepoint:
        (tmp_path / "tracing/events/vmscan/mm_vmscan_lru_gen_young").mkdir(parents=True)
    if cgroup:
        (tmp_path / "cgroup").mkdir()
        (tmp_path / "cgroup/cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "proc").mkdir()
    return FS(Paths(**paths_for(tmp_path)))


def _rows(rows):
    return {r.name: r.ok for r in rows}


def test_usable_tree(tmp_path):
    rows, usable = run(_tree(tmp_path, tracepoint=True))
    assert usable
    got = _rows(rows)
    assert got["lru_gen enabled"] and got["debugfs lru_gen readable"] and got["debugfs lru_gen writable"]
    assert got["tracepoint lru_gen"] and got["cgroup v2"]
    detail = {r.name: r.detail for r in rows}
    assert detail["lru_gen enabled"] == "0x0007 (core, mm_walk, nonleaf_young)"
    # Not a mounted debugfs, so the write was not probed (and the file is untouched).
    assert "not probed" in detail["debugfs lru_gen writable"]
    assert detail["tracepoint lru_gen"].endswith("events/vmscan/mm_vmscan_lru_gen_young (mglrud kernel patch present)")


def test_core_bit_off_is_not_usable(tmp_path):
    rows, usable = run(_tree(tmp_path, enabled="0x0006"))
    assert not usable
    (row,) = [r for r in rows if r.name == "lru_gen enabled"]
    assert row.detail.startswith("0x0006 (mm_walk, nonleaf_young): MGLRU is off; set lru_gen.enable: true in "
                                 "the config, or echo y > ")


def test_stock_kernel_without_lru_gen(tmp_path):
    rows, usable = run(_tree(tmp_path, enabled=None, lru_gen=False, cgroup=False))
    assert not usable
    detail = {r.name: r.detail for r in rows}
    assert "CONFIG_LRU_GEN" in detail["lru_gen enabled"]
    assert "mount -t debugfs" in detail["debugfs lru_gen readable"]
    assert "stock kernel" in detail["tracepoint lru_gen"]
    table = format_table(rows, usable)
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert table.rstrip().endswith("lru_gen is NOT usable: mglrud cannot age here (see above)")


def test_cli_exit_status(tmp_path, capsys):
    _tree(tmp_path)
    flags = [f"--path.{k}={v}" for k, v in paths_for(tmp_path).items()]
    assert cli.main(["check", *flags]) == 0
    assert "lru_gen is usable" in capsys.readouterr().out
    (tmp_path / "debugfs/lru_gen").unlink()
    assert cli.main(["check", *flags]) == 1


ROOTS = captured_roots()


@pytest.mark.skipif(not ROOTS, reason="no captured fixture roots in tests/fixtures/roots yet")
@pytest.mark.parametrize("root", ROOTS, ids=[r.name for r in ROOTS] or None)
def test_captured_root_is_usable(root, tmp_path):
    copy = copy_root(root, tmp_path / root.name)
    rows, usable = run(FS(Paths(**paths_for(copy))))
    assert usable, format_table(rows, usable)


def test_sources_section_says_which_source_runs_and_why(tmp_path):
    from mglrud.check import format_sources
    fs = _tree(tmp_path, enabled=None, lru_gen=False)
    (tmp_path / "proc/self").mkdir()
    (tmp_path / "proc/self/clear_refs").write_text("")
    (tmp_path / "proc/self/smaps").write_text(
        (FIXTURES / "procfs/pid/smaps").read_text())  # captured from a real process
    auto = format_sources(fs, "auto")
    assert "procfs    used    used because lru_gen is not" in auto
    assert "lru_gen   no      not used:" in auto and "CONFIG_LRU_GEN" in auto
    named = format_sources(fs, ("lru_gen",))
    assert "lru_gen   down    configured, but cannot run" in named
    assert "procfs    no      not in the configured sources" in named
    assert "no chosen source can run here" in named and "no chosen source" not in auto
    # issue 15 item 5: clear_refs is opt-in, and check says what that leaves out
    assert "procfs.clear_refs is off (the default)" in auto and "accessed bytes" in auto
    assert "procfs.clear_refs is on" in format_sources(fs, "auto", clear_refs=True)
    assert "clear_refs is o" not in named  # no /proc source, nothing to say
