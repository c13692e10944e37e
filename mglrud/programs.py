"""Where mglrud's BPF programs (the *.bpf.c files bcc compiles, in bpf/ of the checkout) are.

In a checkout (and after `make install`, which copies the checkout's layout) they sit in bpf/
beside the package directory. In a wheel or the Debian package they are package data in
mglrud/bpf/: setup.py maps the checkout's bpf/ to the package `mglrud.bpf`, so the one copy in
git is what every build ships.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def bpf_program(name: str, package: Path = PACKAGE) -> Path:
    """The path of bpf/NAME: inside the installed package first, else the checkout's bpf/.

    When neither exists, the checkout's path, so the error that follows names where it was
    looked for."""
    inside = package / "bpf" / name
    checkout = package.parent / "bpf" / name
    return inside if inside.is_file() else checkout
