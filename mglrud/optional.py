"""The Python modules mglrud can run without, and the one line to say when one is missing.

The daemon needs only prometheus_client and yaml (Depends of the Debian package). These are
Recommends: each enables one feature, and the command that needs it names the Debian package
that provides it instead of dying with a traceback.
"""
from __future__ import annotations

import importlib

# module -> (Debian package, what needs it)
OPTIONAL = {
    "bcc": ("python3-bpfcc", "the BPF source (per-region heat on a kernel with kernel-patch/)"),
    "numpy": ("python3-numpy", "the BPF source (it decodes the BPF maps and /proc/PID/pagemap)"),
    "urwid": ("python3-urwid", "the live heatmap (mglrud heatmap)"),
    "PIL": ("python3-pil", "the heatmap image (mglrud heatmap --png)"),
    "systemd": ("python3-systemd", "logging to the journal with priorities under systemd"),
}


def missing(module: str) -> str | None:
    """None when MODULE imports; else one line naming what needs it and the package to install."""
    try:
        importlib.import_module(module)
    except Exception as e:  # bcc raises more than ImportError when libbcc is broken
        package, what = OPTIONAL[module]
        return (f"{what} needs the Python module {module!r}, which does not import "
                f"({type(e).__name__}: {e}): apt install {package}, and run mglrud with /usr/bin/python3 "
                f"(or a venv made with --system-site-packages)")
    return None
