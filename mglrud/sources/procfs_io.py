"""The /proc source's I/O on one process: reading its files, and writing its clear_refs safely.

clear_refs (Documentation/filesystems/proc.rst) is written as root into another
user's process, so the write goes through the pid directory opened with
O_NOFOLLOW and only after the process's start time (through that same handle)
still matches the process the target listed: a pid reused by someone else is
never cleared.
"""

from __future__ import annotations

import errno
import os

from mglrud import kernelwrite
from mglrud.fs import FS
from mglrud.targets import stat_start


class Exited(Exception):
    """The process went away while being read."""


class Denied(Exception):
    """No access to the process; the message is the sentence a user reads."""


class Replaced(Exception):
    """The pid now belongs to another process than the one the target selected (pid reuse)."""


def _clear_refs(fs: FS, pid: int, start: int | None) -> None:
    """Write "1" to /proc/PID/clear_refs of the process that started at `start`, and of no other.

    The pid directory is opened once (O_NOFOLLOW: a symlink there, as in a planted or
    mistaken paths.procfs tree, is refused) and both the start-time check and the write
    go through that one descriptor: a /proc/PID directory fd stays bound to its process,
    so a pid reused after the check cannot receive the write (openat then fails, ESRCH).
    clear_refs itself is opened with O_NOFOLLOW too.
    """
    # No O_CREAT/O_TRUNC: procfs needs neither, and a vanished process must fail, not create.
    dirfd = os.open(fs.proc(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        sfd = os.open("stat", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
        try:
            now = stat_start(os.read(sfd, 4096).decode(errors="replace"))
        finally:
            os.close(sfd)
        if start is None or now != start:
            raise Replaced()
        fd = os.open("clear_refs", os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dirfd)
        try:
            kernelwrite.record(kernelwrite.CLEAR_REFS, fs.proc(pid, "clear_refs"), b"1")
            os.write(fd, b"1")
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def _read(fs: FS, pid: int, name: str) -> str:
    return fs.proc(pid, name).read_text(errors="surrogateescape")


def _oserror(e: OSError, pid: int, what: str) -> Exception:
    if isinstance(e, (FileNotFoundError, ProcessLookupError)) or e.errno == errno.ESRCH:
        return Exited()
    if e.errno == errno.ELOOP:
        return OSError(errno.ELOOP, f"a symbolic link where procfs has none, refused {what} it")
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        uid = os.geteuid()
        who = "root" if uid == 0 else f"uid {uid}"
        return Denied(f"permission denied {what} /proc/{pid}: mglrud runs as {who} and needs ptrace access "
                      f"to the process (PTRACE_MODE_READ; run as root with CAP_SYS_PTRACE, and check "
                      f"kernel.yama.ptrace_scope and LSM policy)")
    return e
