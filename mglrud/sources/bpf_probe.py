"""Can the BPF source run on a kernel without mglrud's tracepoint? The accessed-bit probe.

On a distribution kernel (no kernel-patch/), bpf/hotness.bpf.c attaches to the two
x86-64 functions that clear an accessed bit, ptep_test_and_clear_young() and
pmdp_test_and_clear_young() (arch/x86/mm/pgtable.c), as an fexit program (BPF
trampoline: needs the kernel's BTF, /sys/kernel/btf/vmlinux, and the function
in tracefs' available_filter_functions) or, failing that, as a kprobe +
kretprobe pair. docs/stock-kernel.md says what it sees and what it cannot.

What is looked at, each through the FS seam:
- the architecture (os.uname().machine): only x86_64 has the helpers out of line;
  arm64's are inline in arch/arm64/include/asm/pgtable.h, nothing to attach to;
- /proc/kallsyms: both function symbols, and the address of the variable
  vmemmap_base (the program finds a pfn's struct page there, for node and
  anon/file); addresses read 0 unless root (kptr_restrict, Documentation/
  admin-guide/sysctl/kernel.rst);
- /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): fexit, else kretprobe;
- tracefs available_filter_functions: fexit attaches through the function's
  ftrace entry, else kretprobe;
- kernel headers for bcc: /lib/modules/RELEASE/build, /sys/kernel/kheaders.tar.xz
  (CONFIG_IKHEADERS) or $BCC_KERNEL_SOURCE;
- bcc itself (found, not imported: see bpf_hotness.probe).
`probe()` is pure given the FS and those two arguments.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from mglrud.fs import FS

FUNCS = ("ptep_test_and_clear_young", "pmdp_test_and_clear_young")
MODES = ("fexit", "kretprobe")


@dataclass(frozen=True)
class ProbeCheck:
    usable: bool
    mode: str  # "fexit", "kretprobe", or "" when not usable
    detail: str  # one line: what was found, or why it cannot be used
    vmemmap_base: int = 0


def kallsyms(fs: FS, names: tuple[str, ...]) -> dict[str, int]:
    """{name: address} of those of `names` found in /proc/kallsyms (0 when hidden)."""
    want, found = set(names), {}
    with open(fs.proc("kallsyms")) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] in want:
                found.setdefault(parts[2], int(parts[0], 16))
    return found


def headers(fs: FS, release: str, modules: Path = Path("/lib/modules")) -> str:
    """Where bcc will find this kernel's headers, or "" if nowhere."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and Path(env).is_dir():
        return env
    build = modules / release / "build"
    if (build / "include").is_dir():
        return str(build)
    kheaders = fs.sys("kernel", "kheaders.tar.xz")
    return str(kheaders) if kheaders.exists() else ""


def probe(fs: FS, machine: str | None = None, release: str | None = None,
          modules: Path = Path("/lib/modules")) -> ProbeCheck:
    u = os.uname()
    machine, release = machine or u.machine, release or u.release
    if machine != "x86_64":
        return ProbeCheck(False, "", f"no accessed-bit probe on {machine}: {' and '.join(FUNCS)} are out-of-line "
                                     f"functions on x86-64 only (arm64 inlines them); needs mglrud's kernel patch")
    try:
        syms = kallsyms(fs, FUNCS + ("vmemmap_base",))
    except OSError as e:
        return ProbeCheck(False, "", f"cannot read {fs.proc('kallsyms')}: {e.strerror}")
    missing = [f for f in FUNCS if f not in syms]
    if missing:
        return ProbeCheck(False, "", f"no symbol {missing[0]} in {fs.proc('kallsyms')}: this kernel inlines it "
                                     f"or does not have it; needs mglrud's kernel patch")
    base = syms.get("vmemmap_base", 0)
    if not base:
        return ProbeCheck(False, "", f"{fs.proc('kallsyms')} shows no address for vmemmap_base: run mglrud "
                                     f"as root (kernel.kptr_restrict hides addresses from others)")
    where = headers(fs, release, modules)
    if not where:
        return ProbeCheck(False, "", f"no kernel headers for bcc: install linux-headers-{release} "
                                     f"({modules / release / 'build'} missing, no CONFIG_IKHEADERS)")
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return ProbeCheck(False, "", "bcc cannot be found: apt install python3-bpfcc, run with /usr/bin/python3")
    btf = fs.sys("kernel", "btf", "vmlinux")
    if not btf.exists():
        return ProbeCheck(True, "kretprobe", f"no {btf} (CONFIG_DEBUG_INFO_BTF off): fexit cannot attach, "
                                             f"kprobe+kretprobe on {FUNCS[0]} instead; headers in {where}",
                          base)
    try:
        with open(fs.tracefs("available_filter_functions")) as f:
            traceable = {line.split()[0] for line in f if line.strip()}
    except OSError:
        traceable = None
    if traceable is not None and FUNCS[0] not in traceable:
        return ProbeCheck(True, "kretprobe", f"{FUNCS[0]} is not in available_filter_functions: fexit cannot "
                                             f"attach, kprobe+kretprobe instead; headers in {where}", base)
    return ProbeCheck(True, "fexit", f"no tracepoint; fexit on {' and '.join(FUNCS)} (BTF {btf}, "
                                     f"headers in {where})", base)
