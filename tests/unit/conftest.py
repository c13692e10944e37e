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


# Every command that got past Writer.write's check to any lru_gen writer (recording, dry-run or
# file) in the whole session: none may be an eviction ("- ..."); mglrud only ages. Commands
# the check refused (test_lru_gen tries evictions on purpose) are counted apart.
WRITTEN: list[str] = []
REFUSED: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def no_eviction_command_ever():
    from mglrud.fs import RefusedCommand, Writer

    original = Writer.write

    def write(self, command: str) -> None:
        try:
            original(self, command)
        except RefusedCommand:
            REFUSED.append(command)
            raise
        except BaseException:
            WRITTEN.append(command)  # reached the writer, which failed (an injected errno)
            raise
        WRITTEN.append(command)

    Writer.write = write
    yield
    Writer.write = original
    evictions = [c for c in WRITTEN if not c.startswith("+ ")]
    assert not evictions, f"commands other than aging reached a writer: {evictions[:5]}"
