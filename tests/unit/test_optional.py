"""A missing Recommends (urwid, Pillow, python3-systemd, bcc) is named with its Debian package.

A module is made missing by putting None in sys.modules (import then raises ImportError), the
way a machine without python3-pil or python3-urwid behaves.
"""
import sys

import pytest

from mglrud import check, cli, optional, tui


def test_missing_names_the_module_the_feature_and_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    problem = optional.missing("PIL")
    assert problem.startswith("the heatmap image (mglrud heatmap --png) needs the Python module 'PIL'")
    assert "apt install python3-pil" in problem
    monkeypatch.delitem(sys.modules, "PIL")
    assert optional.missing("PIL") is None  # Debian's python3-pil, installed by scripts/install-deps run


def test_every_optional_module_maps_to_a_debian_package():
    assert {m: p for m, (p, _) in optional.OPTIONAL.items()} == {
        "bcc": "python3-bpfcc", "numpy": "python3-numpy", "urwid": "python3-urwid", "PIL": "python3-pil",
        "systemd": "python3-systemd"}


def test_check_lists_the_optional_modules_without_changing_usable(monkeypatch, tmp_path):
    from mglrud.config import Paths
    from mglrud.fs import FS

    fs = FS(Paths(procfs=str(tmp_path), sysfs=str(tmp_path), debugfs=str(tmp_path), cgroupfs=str(tmp_path),
                  tracefs=str(tmp_path)))
    rows_before, usable_before = check.run(fs)
    monkeypatch.setitem(sys.modules, "urwid", None)
    rows, usable = check.run(fs)
    assert usable == usable_before
    row = {r.name: r for r in rows}["urwid importable"]
    assert not row.ok and "apt install python3-urwid" in row.detail
    assert [r.name for r in rows] == [r.name for r in rows_before]
    assert "urwid importable            no      the live heatmap (mglrud heatmap) needs" in check.format_table(rows, usable)


@pytest.mark.parametrize("module, extra, package", [("PIL", ["--png", "x.png"], "python3-pil"),
                                                    ("urwid", [], "python3-urwid")])
def test_heatmap_says_which_package_is_missing_before_reading_anything(monkeypatch, tmp_path, capsys,
                                                                       module, extra, package):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)

    def no_feed(args):
        raise AssertionError("open_feed called although the heatmap cannot be drawn")

    monkeypatch.setattr(tui, "open_feed", no_feed)
    assert cli.main(["heatmap", "--pid", "1", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mglrud: heatmap: ") and f"apt install {package}" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
