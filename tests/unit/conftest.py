"""Shared helpers for unit tests: where the captured fixtures are, golden-file updating."""

import os
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
