"""The built wheel, installed in a clean venv, runs: `check`, `heatmap --help`, `run` serving /metrics.

Issue 16, item 6: `pip install .` once installed a package without mglrud.render, and without
the BPF program. This builds an sdist and a wheel from a copy of the checkout with Debian's
python3-build (no network: --no-isolation, on Debian's setuptools), installs the wheel with
pip --no-index into a venv made with --system-site-packages (bcc, prometheus_client and yaml
come from Debian, as they do in production), and runs the installed `mglrud` from outside the
checkout, with no PYTHONPATH, so nothing can come from the source tree.

`mglrud run` gets a config whose one target is the test's own workload (pid:) and the /proc
source only: it never touches another process of this machine.
"""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mglrud import __version__

from tests.daemonproc import DaemonProc, metric_value, start_workload, stop_process

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("procfs_workload.py")
PY = "/usr/bin/python3"  # Debian's: it has python3-build, setuptools and bcc


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(argv, cwd, timeout=300, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"{argv} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(venv dir, wheel path): the wheel built from a copy of the checkout, installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    # What the sdist needs, copied so the build's egg-info and build/ stay out of the checkout.
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("mglrud", "bpf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([PY, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)], tmp)
    (wheel,) = (tmp / "dist").glob("mglrud-*-py3-none-any.whl")
    venv = tmp / "venv"
    _run([PY, "-m", "venv", "--system-site-packages", str(venv)], tmp)
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)], tmp)
    return venv, wheel


def test_the_wheel_has_every_package_of_the_checkout_and_the_bpf_program(venv):
    _, wheel = venv
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "mglrud").rglob("__init__.py")}
    assert packages and {"mglrud", "mglrud/render"} <= packages
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "mglrud/bpf/hotness.bpf.c" in names
    assert (zipfile.ZipFile(wheel).read("mglrud/bpf/hotness.bpf.c") == (REPO / "bpf/hotness.bpf.c").read_bytes())


def test_installed_package_finds_its_bpf_program_inside_the_venv(venv, tmp_path):
    v, _ = venv
    p = _run([str(v / "bin/python"), "-c", "import mglrud, mglrud.sources.bpf_hotness as b; "
              "print(mglrud.__file__); print(b.DEFAULT_PROGRAM); print(b.DEFAULT_PROGRAM.is_file())"], tmp_path)
    init, program, exists = p.stdout.split()
    site = next((v / "lib").glob("python3*/site-packages"))
    assert Path(init) == site / "mglrud/__init__.py"
    assert Path(program) == site / "mglrud/bpf/hotness.bpf.c" and exists == "True"


def test_installed_check_and_heatmap_help_run(venv, tmp_path):
    v, _ = venv
    check = _run([str(v / "bin/mglrud"), "check"], tmp_path, check=False)
    # 0 where lru_gen can be aged, 1 where it cannot (this host); either way the whole table.
    assert check.returncode in (0, 1), check.stderr
    assert check.stdout.startswith("CHECK ") and "SOURCES (auto)" in check.stdout, check.stdout + check.stderr
    assert "Traceback" not in check.stderr, check.stderr
    help_ = _run([str(v / "bin/mglrud"), "heatmap", "--help"], tmp_path)
    assert help_.stdout.startswith("usage: mglrud heatmap") and "--png" in help_.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: clear_refs and smaps of the workload")
def test_installed_run_serves_metrics_of_the_own_workload(venv, tmp_path):
    v, _ = venv
    work, info = start_workload([sys.executable, str(WORKLOAD), "--size", "8M", "--seconds", "300"])
    try:
        cfg = tmp_path / "mglrud.yaml"
        cfg.write_text(f"sources: [procfs]\naging: {{interval: 1s}}\nsnapshot: {{interval: 1s}}\n"
                       f"metrics: {{cold_thresholds: [1s, 2s]}}\n"
                       f"targets: [{{name: wheel-workload, pid: {info['pid']}}}]\n")
        # PYTHONPATH emptied: DaemonProc would point it at the checkout.
        d = DaemonProc.start([], tmp_path / "mglrud.log", env={"PYTHONPATH": ""}, wrapper=[
            str(v / "bin/mglrud"), "run", "-c", str(cfg), "--listen.port", "0"], forks=False)
        try:
            text = d.wait_metrics(lambda t: metric_value(t, 'mglrud_source_up{source="procfs"}') == 1.0
                                  and 'target="wheel-workload"' in t, "the workload's /proc series")
            assert re.search(r'^mglrud_mapping_resident_bytes\{.*target="wheel-workload".*\} [1-9]', text, re.M), text
            assert metric_value(text, f'mglrud_build_info{{version="{__version__}"}}') == 1.0, text
            assert not [line for line in text.splitlines() if "target=" in line and 'target="wheel-workload"' not in line]
            assert d.proc.args[0] == str(v / "bin/mglrud")
        finally:
            assert d.stop() == 0, d.log_text()
    finally:
        stop_process(work)
