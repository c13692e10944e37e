"""Whether a file mglrud runs as root may trust: the BPF program named by `bpf.program`.

bcc compiles that C file and loads it into the kernel with mglrud's privileges, so whoever
can write it, or replace it, can run code in the kernel. The rule is OpenSSH's StrictModes
(sshd_config(5)): the file and every directory above it must belong to root (or to the
user mglrud runs as, which is root under the unit) and must not be writable by group or
others; a directory writable by others is accepted only with the sticky bit (/tmp), where
no one else can rename or remove what is not theirs (inode(7), S_ISVTX). Checked on the
resolved path (symlinks followed), which is also the path the loader hands to the compiler
(mglrud/bpf_loader.py), so a symlink someone else can re-point is out of the picture; the
check and the compile are two steps, but with no writable directory on the way no one else
can swap the file in between.
"""

from __future__ import annotations

import os
import stat


def trusted_uids() -> tuple[int, ...]:
    return (0,) if os.geteuid() == 0 else (0, os.geteuid())


def untrusted(path: str, uids: tuple[int, ...] | None = None) -> str:
    """Why `path` must not be compiled as root, or "" when it may be. A file that does not
    exist is "" here: whoever reads it says it is missing."""
    uids = trusted_uids() if uids is None else uids
    who = "root" if uids == (0,) else "root or uid " + ", ".join(str(u) for u in uids if u != 0)
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"cannot check {path}: {e.strerror}"
    shown = path if real == path else f"{path} (-> {real})"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown} is not a regular file"
    if st.st_uid not in uids:
        return (f"{shown} belongs to uid {st.st_uid}, not {who}: it is compiled into the kernel as root "
                f"(chown root it, or name a file root owns)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{shown} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): it is compiled "
                f"into the kernel as root (chmod go-w it)")
    d = os.path.dirname(real)
    while True:
        try:
            ds = os.stat(d)
        except OSError as e:
            return f"cannot check {d}: {e.strerror}"
        if ds.st_uid not in uids:
            return (f"{shown}: its directory {d} belongs to uid {ds.st_uid}, not {who}, who could replace "
                    f"the program compiled as root")
        if ds.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not ds.st_mode & stat.S_ISVTX:
            return (f"{shown}: its directory {d} is writable by group or others (mode "
                    f"{stat.S_IMODE(ds.st_mode):04o}), who could replace the program compiled as root")
        if d == "/":
            return ""
        d = os.path.dirname(d)
