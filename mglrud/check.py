"""`mglrud check`: a preflight table of what works on this machine and why not.

Looks at /sys/kernel/mm/lru_gen/enabled and /sys/kernel/debug/lru_gen
(Documentation/admin-guide/mm/multigen_lru.rst), the tracepoint of mglrud's
kernel patch (tracefs events/vmscan/mm_vmscan_lru_gen_young_range), bcc (Debian's python3-bpfcc),
cgroup v2 (Documentation/admin-guide/cgroup-v2.rst), the cgroup namespace
(mglrud/cgroupns.py), privileges and the optional urwid, Pillow and python3-systemd
(mglrud/optional.py).
Exit status 0 when lru_gen can be read and aged, 1 otherwise.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from mglrud import cgroupns, optional
from mglrud.fs import FS, FileWriter
from mglrud.sources import bpf_hotness, lru_gen, selection

# Bits of /sys/kernel/mm/lru_gen/enabled (multigen_lru.rst, "Runtime options").
ENABLED_BITS = {0x1: "core", 0x2: "mm_walk", 0x4: "nonleaf_young"}
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Row:
    name: str
    ok: bool
    detail: str


def _enabled(fs: FS) -> Row:
    path = fs.sys("kernel", "mm", "lru_gen", "enabled")
    try:
        value = int(path.read_text().strip(), 16)
    except FileNotFoundError:
        return Row("lru_gen enabled", False, f"{path} missing: kernel built without CONFIG_LRU_GEN")
    except (OSError, ValueError) as e:
        return Row("lru_gen enabled", False, f"cannot read {path}: {e}")
    bits = ", ".join(n for b, n in ENABLED_BITS.items() if value & b) or "none"
    if not value & 0x1:
        return Row("lru_gen enabled", False, f"{value:#06x} ({bits}): MGLRU is off; {lru_gen.how_to_enable(fs)}")
    return Row("lru_gen enabled", True, f"{value:#06x} ({bits})")


def _debugfs_mounted(fs: FS) -> bool | None:
    """None when the mount table is not available (a fixture tree)."""
    try:
        mounts = fs.proc("self", "mounts").read_text()
    except OSError:
        return None
    return any(line.split()[1:3] == [fs.paths.debugfs, "debugfs"] for line in mounts.splitlines()
               if len(line.split()) > 2)


def _readable(fs: FS) -> tuple[Row, tuple]:
    try:
        lruvecs = lru_gen.read(fs)
    except lru_gen.Unavailable as e:
        return Row("debugfs lru_gen readable", False, str(e)), ()
    nodes = sorted({h.node for h in lruvecs})
    memcgs = len({h.memcg_id for h in lruvecs})
    return Row("debugfs lru_gen readable", True, f"{fs.lru_gen}: {memcgs} memcgs, nodes {nodes}"), lruvecs


def _writable(fs: FS, lruvecs: tuple) -> Row:
    name = "debugfs lru_gen writable"
    if not os.access(fs.lru_gen, os.W_OK):
        return Row(name, False, f"{fs.lru_gen} is not writable: run as root; aging needs it")
    if not lruvecs or not _debugfs_mounted(fs):
        return Row(name, True, "write permission (not probed: not a mounted debugfs)")
    # Probe with an aging command for a generation older than the current one: the
    # kernel accepts it and does nothing (run_aging() returns 0 when seq < max_seq),
    # yet it fails like a real one under lockdown or without privilege.
    h = lruvecs[0]
    cmd = lru_gen.aging_command(h.memcg_id, h.node, h.max_seq - 1, True, True)
    try:
        FileWriter(fs.lru_gen).write(cmd)
    except OSError as e:
        hint = " (kernel lockdown?)" if e.errno == errno.EPERM else ""
        return Row(name, False, f"no-op aging write {cmd!r} failed: {e.strerror}{hint}")
    return Row(name, True, f"no-op aging write {cmd!r} accepted")


# mglrud's kernel patch (kernel-patch/) adds vmscan:mm_vmscan_lru_gen_young_range (its
# debug patch vmscan:mm_vmscan_lru_gen_young); a separate events/lru_gen/ system is
# accepted too in case the series renames it.
TRACEPOINTS = (("events", "vmscan", "mm_vmscan_lru_gen_young_range"), ("events", "vmscan", "mm_vmscan_lru_gen_young"),
               ("events", "lru_gen"))


def _tracepoint(fs: FS) -> Row:
    name = "tracepoint lru_gen"
    for parts in TRACEPOINTS:
        path = fs.tracefs(*parts)
        if path.is_dir():
            return Row(name, True, f"{path} (mglrud kernel patch present)")
    if not fs.tracefs("events").is_dir():
        return Row(name, False, f"tracefs not mounted at {fs.paths.tracefs} "
                                f"(mount -t tracefs none {fs.paths.tracefs})")
    return Row(name, False, f"{fs.tracefs(*TRACEPOINTS[0])} missing: stock kernel; the BPF source uses the "
                            f"accessed-bit probe instead where it can (BPF SOURCE below, docs/stock-kernel.md)")


def _bcc() -> Row:
    try:
        import bcc  # noqa: F401  Debian's python3-bpfcc, not PyPI's "bcc"
    except Exception as e:  # bcc raises more than ImportError when libbcc is broken
        return Row("bcc importable", False, f"{type(e).__name__}: {e} (apt install python3-bpfcc; "
                                            f"run with /usr/bin/python3)")
    return Row("bcc importable", True, getattr(bcc, "__file__", "bcc"))


def _optional() -> list[Row]:
    """The Recommends other than bcc (its own row above): features, not whether mglrud can age."""
    rows = []
    for module, label in (("urwid", "urwid importable"), ("PIL", "Pillow importable"),
                          ("systemd", "python3-systemd importable")):
        problem = optional.missing(module)
        rows.append(Row(label, problem is None, problem or f"{optional.OPTIONAL[module][1]}: available"))
    return rows


def _privileges(fs: FS) -> Row:
    if os.geteuid() == 0:
        return Row("privileges", True, "root")
    try:
        for line in fs.proc("self", "status").read_text().splitlines():
            if line.startswith("CapEff:") and int(line.split()[1], 16) & (1 << CAP_SYS_ADMIN):
                return Row("privileges", True, "CAP_SYS_ADMIN")
    except OSError:
        pass
    return Row("privileges", False, "not root and no CAP_SYS_ADMIN: debugfs and BPF need them")


def _cgroup2(fs: FS) -> Row:
    try:
        controllers = fs.cgroup("cgroup.controllers").read_text().split()
    except OSError:
        return Row("cgroup v2", False, f"{fs.paths.cgroupfs} is not a cgroup v2 mount: memcg targets need it")
    if "memory" not in controllers:
        return Row("cgroup v2", False, f"memory controller not available in {fs.paths.cgroupfs}")
    return Row("cgroup v2", True, f"{fs.paths.cgroupfs} with the memory controller")


def _cgroup_namespace(fs: FS) -> Row:
    """Not part of `usable`: lru_gen and memcg targets work in any namespace; process and unit targets do not."""
    def read(path, link=False):
        try:
            return os.readlink(path) if link else path.read_text()
        except OSError:
            return None

    private, detail = cgroupns.judge(read(fs.proc("self", "ns", "cgroup"), link=True),
                                     read(fs.proc("self", "mountinfo")), read(fs.proc("1", "cgroup")),
                                     fs.paths.cgroupfs)
    return Row("cgroup namespace", private is not True, detail)


def run(fs: FS) -> tuple[list[Row], bool]:
    enabled = _enabled(fs)
    readable, lruvecs = _readable(fs)
    writable = _writable(fs, lruvecs) if readable.ok else Row("debugfs lru_gen writable", False, "not readable")
    rows = [enabled, readable, writable, _cgroup2(fs), _cgroup_namespace(fs), _tracepoint(fs), _bcc(), _privileges(fs),
            *_optional()]
    return rows, enabled.ok and readable.ok and writable.ok


# What `mglrud check` says when the /proc source runs without clear_refs (the default).
CLEAR_REFS_OFF = ("procfs.clear_refs is off (the default): resident, anon/file, swap and NUMA node bytes "
                  "per mapping only; accessed bytes, idle and cold times need procfs.clear_refs: true, which "
                  "clears the accessed bits reclaim uses and write-locks each read process's mmap")
CLEAR_REFS_ON = ("procfs.clear_refs is on: accessed bytes are measured by writing /proc/PID/clear_refs, which "
                 "clears the accessed bits reclaim uses and write-locks each read process's mmap")


def format_sources(fs: FS, requested: str | tuple[str, ...], clear_refs: bool = False) -> str:
    """Which sources `mglrud run` would use with this config (sources/selection.py), and why the others not;
    with the /proc source, whether it writes clear_refs (procfs.clear_refs)."""
    probes = selection.probe_all(fs)
    choice = selection.choose(requested, probes)
    lines = ["", f"SOURCES ({'auto' if requested == selection.AUTO else 'configured: ' + ', '.join(requested)})"]
    for name, why in choice.why:
        state = ("used" if probes[name].usable else "down") if name in choice.active else "no"
        lines.append(f"{name.ljust(8)}  {state:6}  {why}")
        if name == "procfs" and state == "used":
            lines.append(f"{'':8}  {'':6}  {CLEAR_REFS_ON if clear_refs else CLEAR_REFS_OFF}")
    if not any(probes[name].usable for name in choice.active):
        lines.append("no chosen source can run here: mglrud would serve only its own metrics")
    return "\n".join(lines) + "\n"


def bpf_program(fs: FS, cfg) -> Row:
    """Compile and attach the BPF source's program, then detach (ebpf_exporter's --config.check):
    the only way to know that bcc can build it against this kernel. Tried only where the
    tracepoint (or, on a stock kernel, the accessed-bit probe: sources/bpf_probe.py) and bcc are there."""
    from mglrud.sources import bpf_probe  # noqa: F401

    name = "bpf program"
    probe = bpf_hotness.probe(fs)
    if not probe.usable:
        return Row(name, False, f"not tried: {probe.detail}")
    value = lru_gen.enabled_value(fs)
    if value is not None and not value & 0x1:  # it would count nothing: no aging walk runs
        return Row(name, False, f"not tried: MGLRU is off (lru_gen enabled above); once on, it would use: "
                                f"{probe.detail}")
    try:
        prog = bpf_hotness.Program(cfg, fs)
    except bpf_hotness.Unavailable as e:
        return Row(name, False, str(e))
    prog.close()
    where = f"vmscan:{prog.event}"
    if prog.event in bpf_probe.MODES:  # no tracepoint: the probe on the accessed-bit helpers
        where = f"{' and '.join(bpf_probe.FUNCS)} as {prog.event}"
    return Row(name, True, f"{bpf_hotness.program_path(cfg)} compiled and attached to {where} "
                           f"in {prog.compile_seconds:.1f}s (then detached)")


def format_bpf(row: Row) -> str:
    return f"\nBPF SOURCE\n{row.name}  {'ok' if row.ok else 'no':6}  {row.detail}\n"


def format_table(rows: list[Row], usable: bool) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'CHECK'.ljust(width)}  STATUS  DETAIL"]
    lines += [f"{r.name.ljust(width)}  {'ok' if r.ok else 'no':6}  {r.detail}" for r in rows]
    lines.append("")
    lines.append("lru_gen is usable: mglrud can age and export generations" if usable
                 else "lru_gen is NOT usable: mglrud cannot age here (see above)")
    return "\n".join(lines) + "\n"
