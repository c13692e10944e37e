"""Shared helpers for unit tests: where the captured fixtures are, golden-file updating."""

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# MGLRUD_FIXTURES points the tests at another capture tree (same layout), e.g. a fresh one.
FIXTURES = Path(os.environ.get("MGLRUD_FIXTURES", REPO / "tests" / "fixtures"))
GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/unit/golden/* from the current output (or MGLRUD_UPDATE_GOLDEN=1)")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden") or os.environ.get("MGLRUD_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden(update_golden):
    """golden(NAME, TEXT): TEXT must equal tests/unit/golden/NAME; with --update-golden, it becomes it."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update_golden:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(text)
            return
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        assert text == path.read_text(), f"{name} differs from the golden file (pytest --update-golden)"

    return check


def captured_lru_gen_files() -> list[Path]:
    """Every lru_gen / lru_gen_full captured from a real kernel that is in the tree."""
    files = sorted((FIXTURES / "lru_gen").glob("*")) if (FIXTURES / "lru_gen").is_dir() else []
    files += sorted(FIXTURES.glob("roots/*/debugfs/lru_gen*"))
    return [f for f in files if f.is_file() and not f.name.endswith((".md", ".json"))]


def captured_roots() -> list[Path]:
    """Fixture root trees (debugfs/, sys/, proc/, cgroup/) captured in the test guest."""
    return sorted(p.parent.parent for p in FIXTURES.glob("roots/*/debugfs/lru_gen"))


def copy_root(root: Path, dest: Path) -> Path:
    """A writable copy, so nothing a test does can touch the captured files."""
    shutil.copytree(root, dest, symlinks=True)
    return dest


def paths_for(root: Path) -> dict[str, str]:
    return {"procfs": str(root / "proc"), "sysfs": str(root / "sys"), "debugfs": str(root / "debugfs"),
            "cgroupfs": str(root / "cgroup"), "tracefs": str(root / "tracing")}


# Every write to the kernel in the whole session (mglrud/kernelwrite.py's seam: lru_gen commands
# from any writer, clear_refs, BPF map updates and deletes), held to the rule below -- written out
# here, apart from the writers' own checks, so that a writer whose check is loosened or bypassed
# fails the session (tests/unit/test_kernel_writes.py shows it does).
KERNEL_WRITES: list = []
_AGING = re.compile(rb"\+ [0-9]+ [0-9]+ [0-9]+ [01] [01]")


def write_violations(writes) -> list:
    """The writes mglrud must never make: anything but an aging command to lru_gen, "1" to a
    clear_refs file, an update or delete of a map element."""
    bad = []
    for w in writes:
        if w.kind == "lru_gen":
            ok = _AGING.fullmatch(w.data) is not None
        elif w.kind == "lru_gen_enabled":  # only with lru_gen.enable: true (test_lru_gen_enable.py)
            ok = w.data == b"y" and w.target.endswith("/kernel/mm/lru_gen/enabled")
        elif w.kind == "clear_refs":
            ok = w.data == b"1" and w.target.endswith("/clear_refs")
        else:
            ok = w.kind in ("bpf_map_update", "bpf_map_delete") and w.target.startswith("map fd ")
        if not ok:
            bad.append(w)
    return bad


@pytest.fixture(autouse=True, scope="session")
def only_allowed_kernel_writes_ever():
    from mglrud import kernelwrite

    kernelwrite.OBSERVERS.append(KERNEL_WRITES.append)
    yield
    kernelwrite.OBSERVERS.remove(KERNEL_WRITES.append)
    bad = write_violations(KERNEL_WRITES)
    assert not bad, f"writes other than aging, clear_refs '1' and map elements reached the kernel seam: {bad[:5]}"
