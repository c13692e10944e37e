"""Snapshots built from the captured fixtures, as inputs of the tests that render them.

The golden files (tests/unit/golden/) are outputs a test compares against; `--update-golden`
re-approves them. A test that read one as its input would have its input re-approved along
with the output under test, so the renderers' tests (heatmap, report, TUI) build their input
here from the same fixtures the golden tests use.
"""

import functools
import json
import tempfile
from pathlib import Path

from conftest import captured_roots, paths_for


@functools.lru_cache(maxsize=None)
def _procfs_json() -> str:
    from mglrud.snapshot_json import procfs_dict as to_dict
    from test_procfs_metrics import THRESHOLDS, snapshot

    with tempfile.TemporaryDirectory(prefix="mglrud-fixture-") as tmp:
        return json.dumps(to_dict(snapshot(Path(tmp)).procfs, THRESHOLDS))


def procfs_snapshot() -> dict:
    """The /proc part of /snapshot.json: three reads 30 s apart of the captured process (a fresh copy)."""
    return json.loads(_procfs_json())


@functools.lru_cache(maxsize=None)
def _lru_gen_json(name: str) -> str:
    from test_metrics import _name, _tree, render

    root = next(r for r in captured_roots() if _name(r) == name)
    with tempfile.TemporaryDirectory(prefix="mglrud-fixture-") as tmp:
        return render(paths_for(_tree(root, Path(tmp))))[1]


def lru_gen_snapshot(name: str) -> dict:
    """/snapshot.json of one cycle over a captured root tree (tests/fixtures/roots/NAME)."""
    return json.loads(_lru_gen_json(name))
