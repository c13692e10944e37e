"""mglrud/programs.py: the BPF program is found in an installed package and in a checkout."""
from pathlib import Path

from mglrud import programs
from mglrud.sources import bpf_hotness

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_finds_bpf_beside_the_package():
    assert programs.bpf_program("hotness.bpf.c") == REPO / "bpf" / "hotness.bpf.c"
    assert bpf_hotness.DEFAULT_PROGRAM == REPO / "bpf" / "hotness.bpf.c"


def test_an_installed_package_finds_its_package_data_first(tmp_path):
    site = tmp_path / "site-packages"
    (site / "mglrud" / "bpf").mkdir(parents=True)
    (site / "mglrud" / "bpf" / "hotness.bpf.c").write_text("// packaged\n")
    (site / "bpf").mkdir()  # a stray bpf/ beside it must not win
    (site / "bpf" / "hotness.bpf.c").write_text("// stray\n")
    assert programs.bpf_program("hotness.bpf.c", site / "mglrud") == site / "mglrud" / "bpf" / "hotness.bpf.c"


def test_neither_gives_the_checkout_path_for_the_error(tmp_path):
    (tmp_path / "mglrud").mkdir()
    assert programs.bpf_program("hotness.bpf.c", tmp_path / "mglrud") == tmp_path / "bpf" / "hotness.bpf.c"
