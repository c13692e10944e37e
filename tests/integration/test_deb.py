"""The Debian package (issue 16, item 1): built by scripts/build-deb (`make deb`), lintian-clean,
with the file list, conffiles, control fields and unit an operator expects.

The build is keyed on the tree's contents ($MGLRUD_CACHE/deb/KEY): an unchanged tree reuses the
.deb and its lintian output, a changed one rebuilds (about 40 s on 2 busy cores). Installing,
starting, reloading and purging it under systemd is the guest's job (tests/vm/systemd/).
"""
import os
import subprocess
from pathlib import Path

import pytest

from mglrud import __version__

REPO = Path(__file__).resolve().parents[2]
SYSTEM_ENV = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def deb() -> Path:
    p = subprocess.run([str(REPO / "scripts/build-deb")], capture_output=True, text=True, timeout=900,
                       env=SYSTEM_ENV)
    assert p.returncode == 0, f"scripts/build-deb failed (scripts/install-deps deb installs its tools):\n{p.stderr[-6000:]}"
    path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file(), p.stdout
    return path


def _dpkg_deb(*args) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True, env=SYSTEM_ENV).stdout


def test_name_and_control_fields(deb):
    assert deb.name == f"mglrud_{__version__}_all.deb"
    fields = {k: _dpkg_deb("-f", str(deb), k).strip() for k in
              ("Package", "Version", "Architecture", "Depends", "Recommends", "Section")}
    assert fields["Package"] == "mglrud" and fields["Version"] == __version__ and fields["Architecture"] == "all"
    depends = {d.strip().split()[0] for d in fields["Depends"].split(",")}
    assert {"python3-prometheus-client", "python3-yaml", "python3-systemd"} <= depends, fields["Depends"]
    assert not depends & {"python3-bpfcc", "python3-urwid", "python3-pil"}, "the optional ones are Recommends"
    assert {d.strip() for d in fields["Recommends"].split(",")} == {"python3-bpfcc", "python3-numpy", "python3-urwid", "python3-pil"}


def test_file_list(deb):
    listing = {}
    for line in _dpkg_deb("-c", str(deb)).splitlines():
        mode, *_, rest = line.split(None, 5)
        name = rest.split(" -> ")[0].removeprefix(".")
        listing[name] = (mode, rest.split(" -> ")[1] if " -> " in rest else None)
    site = "/usr/lib/python3/dist-packages/mglrud"
    want = {"/usr/bin/mglrud", "/lib/systemd/system/mglrud.service", "/etc/default/mglrud", "/etc/mglrud/config.yaml",
            "/usr/share/mglrud/bpf/hotness.bpf.c", "/usr/share/man/man1/mglrud.1.gz",
            "/usr/share/doc/mglrud/copyright", "/usr/share/mglrud/prometheus/mglrud.rules.yml",
            "/usr/share/mglrud/prometheus/prometheus.example.yml", f"{site}/render/heatmap.py"}
    want |= {f"/usr/share/mglrud/dashboards/{p.name}" for p in (REPO / "grafana/dashboards").glob("*.json")}
    # Every module of the checkout's package, none left out.
    want |= {f"{site}/{p.relative_to(REPO / 'mglrud')}" for p in (REPO / "mglrud").rglob("*.py")}
    missing = sorted(want - set(listing))
    assert not missing, f"not in the package: {missing}"
    assert listing["/usr/bin/mglrud"][0] == "-rwxr-xr-x"
    # The package data is a link to the one copy in /usr/share/mglrud.
    mode, target = listing[f"{site}/bpf/hotness.bpf.c"]
    assert mode.startswith("l") and (Path(f"{site}/bpf") / target).resolve() == Path("/usr/share/mglrud/bpf/hotness.bpf.c")
    assert not [n for n in listing if "__pycache__" in n or n.endswith(".pyc")], "bytecode is built at install (py3compile)"


def test_conffiles_unit_and_lintian(deb, tmp_path):
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True, env=SYSTEM_ENV)
    assert (root / "DEBIAN/conffiles").read_text().split() == ["/etc/default/mglrud", "/etc/mglrud/config.yaml"]
    assert (root / "etc/mglrud/config.yaml").read_bytes() == (REPO / "config.example.yaml").read_bytes()
    assert 'ARGS=""' in (root / "etc/default/mglrud").read_text().splitlines()
    unit = (root / "lib/systemd/system/mglrud.service").read_text().splitlines()
    assert "EnvironmentFile=-/etc/default/mglrud" in unit
    assert "ExecStart=/usr/bin/mglrud run --config /etc/mglrud/config.yaml $ARGS" in unit
    # Everything else is deploy/mglrud.service's (hardening, watchdog, reload).
    src = (REPO / "deploy/mglrud.service").read_text().splitlines()
    expected = []
    for line in src:
        if line.startswith("ExecStart="):
            expected += ["EnvironmentFile=-/etc/default/mglrud",
                         "ExecStart=/usr/bin/mglrud run --config /etc/mglrud/config.yaml $ARGS"]
        elif not line.startswith("#"):
            expected.append(line)
    assert [line for line in unit if not line.startswith("#")] == expected
    lintian = (deb.parent / "lintian.txt").read_text()
    assert not [line for line in lintian.splitlines() if line[:2] in ("E:", "W:")], lintian


def test_extracted_package_runs_and_finds_its_bpf_program(deb, tmp_path):
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, env=SYSTEM_ENV)
    env = {**SYSTEM_ENV, "PYTHONPATH": str(root / "usr/lib/python3/dist-packages"), "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run(["/usr/bin/python3", str(root / "usr/bin/mglrud"), "--version"], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"mglrud {__version__}", p.stderr
    p = subprocess.run(["/usr/bin/python3", "-c", "import mglrud.sources.bpf_hotness as b; print(b.DEFAULT_PROGRAM)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    program = Path(p.stdout.strip())
    assert program == root / "usr/lib/python3/dist-packages/mglrud/bpf/hotness.bpf.c", p.stderr
    assert program.resolve() == root / "usr/share/mglrud/bpf/hotness.bpf.c"
    assert program.read_bytes() == (REPO / "bpf/hotness.bpf.c").read_bytes()
