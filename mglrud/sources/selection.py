"""Which sources run: BPF + lru_gen, else lru_gen alone, else /proc -- automatic, overridable.

`sources: auto` (the default) probes the kernel once at start and on reload:
lru_gen when debugfs lru_gen can be read (CONFIG_LRU_GEN, debugfs mounted,
root); the BPF source beside it when mglrud's tracepoint and bcc are there;
the /proc source only when lru_gen cannot be used, because clear_refs clears
the same accessed bits MGLRU's aging walks look at. `sources: [lru_gen, procfs]`
names them explicitly: each named source then runs (and reports itself down with
a reason while it cannot), and no other does.

`choose()` is pure; the probe_* functions look at the machine through the FS seam.
"""

from __future__ import annotations

import importlib.util

import os
from dataclasses import dataclass

from mglrud.config import SOURCE_NAMES
from mglrud.fs import FS
from mglrud.sources import bpf_probe, lru_gen

SOURCES = SOURCE_NAMES
AUTO = "auto"


@dataclass(frozen=True)
class Probe:
    name: str
    usable: bool
    detail: str  # what was found, or why it cannot be used, as a sentence


@dataclass(frozen=True)
class Choice:
    active: tuple[str, ...]  # in SOURCES order
    why: tuple[tuple[str, str], ...]  # (source, why it is or is not used), every source listed

    def reason(self, name: str) -> str:
        return dict(self.why)[name]


def probe_lru_gen(fs: FS) -> Probe:
    try:
        lruvecs = lru_gen.read(fs)
    except lru_gen.Unavailable as e:
        enabled = fs.sys("kernel", "mm", "lru_gen", "enabled")
        if not enabled.exists():
            return Probe("lru_gen", False, f"{enabled} missing: the kernel is built without CONFIG_LRU_GEN "
                                           f"(no multi-gen LRU)")
        return Probe("lru_gen", False, str(e))
    return Probe("lru_gen", True, f"{fs.lru_gen} readable ({len({h.memcg_id for h in lruvecs})} memcgs)")


def probe_bpf(fs: FS) -> Probe:
    """The tracepoint of mglrud's kernel patch and bcc; whether the program compiles
    and attaches is only known when the source starts (sources/bpf_hotness.py)."""
    event = fs.tracefs("events", "vmscan", "mm_vmscan_lru_gen_young")
    try:
        found = event.is_dir()
    except PermissionError:
        return Probe("bpf", False, f"{event} is not readable: run mglrud as root")
    if not found:
        # a kernel without mglrud's patch: the accessed-bit probe (sources/bpf_probe.py) where it can run
        check = bpf_probe.probe(fs)
        if check.usable:
            return Probe("bpf", True, check.detail)
        return Probe("bpf", False, f"no tracepoint {event} (a kernel without mglrud's patch, kernel-patch/, "
                                   f"or tracefs not mounted), and {check.detail}")
    # Found, not imported: importing bcc maps LLVM into the daemon for good (~40 MiB resident);
    # only the short-lived loader child imports it (mglrud/bpf_loader.py), and says so if it fails.
    try:
        spec = importlib.util.find_spec("bcc")  # Debian's python3-bpfcc, not PyPI's "bcc"
    except (ImportError, ValueError) as e:
        spec, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "no module named bcc"
    if spec is None:
        return Probe("bpf", False, f"the tracepoint is present, but bcc cannot be found ({why}): "
                                   f"apt install python3-bpfcc, run with /usr/bin/python3")
    return Probe("bpf", True, f"{event} present and bcc installed")


def probe_procfs(fs: FS) -> Probe:
    smaps, clear = fs.proc("self", "smaps"), fs.proc("self", "clear_refs")
    try:
        text = smaps.read_text()
    except OSError as e:
        return Probe("procfs", False, f"cannot read {smaps}: {e.strerror}")
    if "\nReferenced:" not in text:
        return Probe("procfs", False, f"{smaps} has no Referenced field (kernel without CONFIG_PROC_PAGE_MONITOR)")
    if not clear.exists():
        return Probe("procfs", False, f"{clear} missing (kernel without CONFIG_PROC_PAGE_MONITOR)")
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}: only processes it may ptrace can be read"
    return Probe("procfs", True, f"smaps Referenced and clear_refs available; running as {who}")


def probe_all(fs: FS) -> dict[str, Probe]:
    return {"bpf": probe_bpf(fs), "lru_gen": probe_lru_gen(fs), "procfs": probe_procfs(fs)}


def choose(requested: str | tuple[str, ...], probes: dict[str, Probe]) -> Choice:
    if requested != AUTO:
        active = tuple(s for s in SOURCES if s in requested)
        why = []
        for s in SOURCES:
            p = probes[s]
            if s not in requested:
                why.append((s, "not in the configured sources"))
            elif p.usable:
                why.append((s, f"configured; {p.detail}"))
            else:
                why.append((s, f"configured, but cannot run: {p.detail}"))
        return Choice(active, tuple(why))

    lru, bpf, proc = probes["lru_gen"], probes["bpf"], probes["procfs"]
    if lru.usable:
        active = ("bpf", "lru_gen") if bpf.usable else ("lru_gen",)
        why = (
            ("bpf", f"used beside lru_gen: {bpf.detail}" if bpf.usable else f"not used: {bpf.detail}"),
            ("lru_gen", f"used: {lru.detail}"),
            ("procfs", "not used: lru_gen is usable, and clear_refs would clear the accessed bits its aging "
                       "reads (name it in sources: to run it anyway)"),
        )
        return Choice(active, why)
    why = (
        ("bpf", f"not used: it needs lru_gen; {bpf.detail}"),
        ("lru_gen", f"not used: {lru.detail}"),
        ("procfs", f"used because lru_gen is not: {proc.detail}" if proc.usable else f"not used: {proc.detail}"),
    )
    return Choice(("procfs",) if proc.usable else (), why)
