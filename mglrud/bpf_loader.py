"""A short-lived child process that compiles and attaches a BPF program with bcc and hands
the daemon its file descriptors.

Why a child: bcc compiles with clang and LLVM, which stay mapped and leave their
heap behind once loaded: measured in the test guest, `import bcc` and one compile
of bpf/hotness.bpf.c take a Python process from 22 to 96 MiB resident (51 MiB of
libLLVM/libclang text, 18 MiB of heap; glibc's malloc_trim() gives back only the
heap). The daemon needs none of it after the program runs, so the child does the
compile and attach and exits, and the daemon keeps only the kernel objects: the
maps and the perf event that holds the program on the tracepoint. File
descriptors cross over a unix socket as SCM_RIGHTS (man 7 unix); the daemon then
reads the maps with the bpf(2) system call (mglrud/bpfsys.py).

The child runs as root, so only mglrud's own code may run in it: it starts as
`python3 -I -c ...` (isolated mode: PYTHON* variables, the user site and the working
directory are all left out of sys.path; `-m` would put the cwd first) with the package's
own directory added explicitly, and compiles only a program file that root alone can
change (mglrud/filetrust.py).

The child must not run bcc's cleanup: bcc's atexit handler disables the
tracepoint's perf event, and the event is shared with the daemon's descriptor. It
leaves with os._exit() once the descriptors are sent.

Without mglrud's tracepoint (a stock kernel, docs/stock-kernel.md) the program is
attached as an fexit program to the accessed-bit helpers (-DMGLRUD_ATTACH_FEXIT;
the attachment is a BPF link descriptor) and, when that fails to compile, load or
attach, as kprobe + kretprobe (-DMGLRUD_ATTACH_KPROBE; perf event descriptors).
Every descriptor that holds the program attached crosses over the same way.

Protocol (one SOCK_SEQPACKET message each way): the daemon sends JSON
{"path", "cflags", "event", "maps", "attach"} (attach: "tracepoint", the default,
or "fexit" or "kretprobe"); the child answers JSON {"ok": true, "names": [...],
"compile_seconds", "mode"} with one descriptor per name attached (mode: how it
attached, "tracepoint", "fexit" or "kretprobe"; "fallback": why fexit was not
used, when it was asked for), or {"ok": false, "error"}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

TIMEOUT = 1800  # seconds for a compile; ~15-50 s under an idle TCG guest, ~1 min with four guests on
# two cores (struct offsets from BTF: mglrud/btf.py; the stock probe with full headers, when the kernel
# has no BTF: 1-5 min idle, over 10 shared), ~1 s on hardware


class LoadError(Exception):
    """The program could not be compiled, loaded or attached; the message says why."""


ATTACH_FLAGS = {"fexit": "-DMGLRUD_ATTACH_FEXIT", "kretprobe": "-DMGLRUD_ATTACH_KPROBE"}

# How the child starts: -I (isolated: no PYTHON* variables, no user site, and -P: nothing put
# in front of sys.path, where `-m` would put the working directory, so a package planted in
# a writable cwd would run as root), then only the directory this package is installed in
# is added, explicitly. argv: [package dir, descriptor, extra path...].
_BOOT = ("import sys; sys.path[:0] = [sys.argv[1]] + sys.argv[3:]; "
         "from mglrud.bpf_loader import child_main; child_main(int(sys.argv[2]))")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def _end(proc: subprocess.Popen) -> int:
    """Kill (if it still runs) and reap the child: no zombie, whatever happened."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def load(path: Path, cflags: list[str], event: str, maps: list[str], timeout: float = TIMEOUT,
         extra_path: tuple[str, ...] = (), attach: str = "tracepoint", answer_out: dict | None = None):
    """Compile and attach in a child. Returns ({name: fd} for each map, [other fds that hold
    the program attached], seconds the child took to compile and attach). `answer_out`, when
    given, receives the child's answer (its "mode" and "fallback").

    The program file must be one only root can change (mglrud/filetrust.py): it runs in the
    kernel. Its resolved path is what is compiled. `extra_path` goes after the package's
    directory on the child's sys.path (tests put a stand-in bcc there)."""
    from mglrud.filetrust import untrusted

    problem = untrusted(str(path))
    if problem:
        raise LoadError(f"bpf.program: {problem}")
    real = os.path.realpath(path)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = None
    fds: list[int] = []
    try:
        with child:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, PACKAGE_ROOT, str(child.fileno()),
                                     *extra_path], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        with parent:
            parent.settimeout(timeout)
            parent.send(json.dumps({"path": real, "cflags": cflags, "event": event, "maps": maps,
                                    "attach": attach}).encode())
            try:
                msg, fds, _, _ = socket.recv_fds(parent, 1 << 16, 64)
            except socket.timeout:
                _end(proc)
                raise LoadError(f"the BPF loader (pid {proc.pid}) did not answer within {timeout:.0f} s") from None
    except OSError as e:
        if proc is not None:
            _end(proc)
        for fd in fds:
            os.close(fd)
        raise LoadError(f"cannot run the BPF loader ({sys.executable} -I, mglrud.bpf_loader): {e}") from None
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = _end(proc)
    if not msg:
        for fd in fds:
            os.close(fd)
        raise LoadError(f"the BPF loader (pid {proc.pid}) exited with status {rc} before answering")
    answer = json.loads(msg)
    if not answer.get("ok"):
        for fd in fds:
            os.close(fd)
        raise LoadError(answer.get("error") or "the BPF loader failed without saying why")
    names = answer["names"]
    if len(fds) != len(names):
        for fd in fds:
            os.close(fd)
        raise LoadError(f"the BPF loader sent {len(fds)} descriptors for {len(names)} objects")
    if answer_out is not None:
        answer_out.update(answer)
    by_name = dict(zip(names, fds))
    held = [fd for n, fd in by_name.items() if n not in maps]
    return {n: by_name[n] for n in maps}, held, answer.get("compile_seconds", 0.0)


def _child(sock: socket.socket) -> int:
    req = json.loads(sock.recv(1 << 16))

    def fail(error: str) -> int:
        sock.send(json.dumps({"ok": False, "error": error}).encode())
        return 1

    try:
        from bcc import BPF  # Debian's python3-bpfcc, not PyPI's "bcc"
    except Exception as e:
        return fail(f"cannot import bcc ({type(e).__name__}: {e}): apt install python3-bpfcc "
                    f"and run mglrud with /usr/bin/python3")
    started = time.monotonic()
    path = req["path"]
    attach = req.get("attach", "tracepoint")
    modes = {"tracepoint": ["tracepoint"], "fexit": ["fexit", "kretprobe"], "kretprobe": ["kretprobe"]}[attach]
    errors = []
    for mode in modes:
        try:
            b = BPF(src_file=path.encode(), cflags=req["cflags"] + ([ATTACH_FLAGS[mode]] if mode in ATTACH_FLAGS else []))
        except Exception as e:
            how = "" if mode == "tracepoint" else f" as {mode}"
            errors.append(f"bcc could not compile or load {path}{how}: {e}")
            continue
        if mode == "tracepoint":
            attached = b.num_open_tracepoints()
        elif mode == "fexit":
            attached = len(getattr(b, "kfunc_exit_fds", {}))
        else:
            attached = b.num_open_kprobes()
        if attached < 1:
            errors.append(f"{path} loaded but did not attach ({mode}, {req['event']})")
            continue
        break
    else:
        return fail("; ".join(errors))
    names, fds = [], []
    try:
        for m in req["maps"]:
            names.append(m)
            fds.append(b[m].map_fd)
    except Exception as e:
        return fail(f"{path}: no map {m!r} ({e})")
    def text(x) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)

    for tp, fd in b.tracepoint_fds.items():
        names.append("tracepoint:" + text(tp))
        fds.append(fd)
    for fn, fd in getattr(b, "kfunc_exit_fds", {}).items():  # BPF links (bpf_raw_tracepoint_open of a tracing program)
        names.append("fexit:" + text(fn))
        fds.append(fd)
    for ev, by_fn in getattr(b, "kprobe_fds", {}).items():  # perf events, one per (event, function)
        for fn, fd in by_fn.items():
            names.append(f"kprobe:{text(ev)}:{text(fn)}")
            fds.append(fd)
    for name, fn in b.funcs.items():
        names.append("prog:" + (name.decode() if isinstance(name, bytes) else str(name)))
        fds.append(fn.fd)
    answer = {"ok": True, "names": names, "compile_seconds": time.monotonic() - started, "mode": mode}
    if errors:
        answer["fallback"] = errors[0]
    socket.send_fds(sock, [json.dumps(answer).encode()], fds)
    return 0


def child_main(fd: int) -> None:
    """The child's entry point (started by load() with _BOOT); never returns."""
    s = socket.socket(fileno=fd)
    try:
        rc = _child(s)
    except Exception as e:  # an answer rather than a silent exit
        try:
            s.send(json.dumps({"ok": False, "error": f"BPF loader: {type(e).__name__}: {e}"}).encode())
        except OSError:
            pass
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit(): bcc's atexit cleanup would disable the perf event the daemon now holds.
    os._exit(rc)
