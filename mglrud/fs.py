"""The one filesystem seam: where /proc, /sys, debugfs, cgroupfs and tracefs are, and who writes lru_gen.

Every kernel file mglrud reads is found through an FS built from the config's
`paths:` (or `--path.procfs` etc.), so tests point it at fixture trees captured
from a real kernel, as node_exporter's tests do. Every write to
/sys/kernel/debug/lru_gen goes through a Writer; tests swap in a
RecordingWriter and compare the exact command strings. Writers report each command to
mglrud/kernelwrite.py, the seam of every kernel write.

Writers accept only aging commands (`+ memcg_id node_id max_seq can_swap
force_scan`, Documentation/admin-guide/mm/multigen_lru.rst). mglrud never
evicts, so an eviction command (`- ...`) is refused here, below all callers.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import stat
from pathlib import Path

from mglrud import kernelwrite
from mglrud.config import Paths

log = logging.getLogger(__name__)

_AGING_COMMAND = re.compile(r"\+ \d+ \d+ \d+ [01] [01]")


class RefusedCommand(ValueError):
    """Raised for anything but an aging command; a bug in mglrud if ever seen."""


def visible(path: Path) -> bool:
    """path exists and this user may look at it (tracefs and debugfs are 0700 root)."""
    try:
        return path.exists()
    except PermissionError:
        return False


class FS:
    def __init__(self, paths: Paths):
        self.paths = paths

    def proc(self, *parts: str | int) -> Path:
        return Path(self.paths.procfs, *map(str, parts))

    def sys(self, *parts: str) -> Path:
        return Path(self.paths.sysfs, *parts)

    def debugfs(self, *parts: str) -> Path:
        return Path(self.paths.debugfs, *parts)

    def cgroup(self, *parts: str) -> Path:
        return Path(self.paths.cgroupfs, *parts)

    def tracefs(self, *parts: str) -> Path:
        """tracefs, or its older home under debugfs when tracefs is not mounted on its own."""
        own = Path(self.paths.tracefs, *parts)
        if visible(Path(self.paths.tracefs, "events")):
            return own
        legacy = self.debugfs("tracing")
        return Path(legacy, *parts) if visible(Path(legacy, "events")) else own

    @property
    def lru_gen(self) -> Path:
        return self.debugfs("lru_gen")


class Writer:
    """Writes one aging command to lru_gen; raises OSError with the kernel's errno."""

    def write(self, command: str) -> None:
        if not _AGING_COMMAND.fullmatch(command):
            raise RefusedCommand(f"mglrud only writes aging commands ('+ id node seq can_swap force_scan'); "
                                 f"refused {command!r}")
        kernelwrite.record(kernelwrite.LRU_GEN, getattr(self, "path", type(self).__name__), command.encode())
        self._write(command)

    def _write(self, command: str) -> None:
        raise NotImplementedError


class NotKernelFile(OSError):
    """paths.debugfs points at a copy (a fixture tree?), not at the kernel's debugfs."""


class FileWriter(Writer):
    def __init__(self, path: Path):
        self.path = path

    def _write(self, command: str) -> None:
        # No O_TRUNC/O_CREAT: debugfs needs neither, and a missing file must fail (ENOENT)
        # rather than be created.
        fd = os.open(self.path, os.O_WRONLY)
        try:
            # debugfs reports size 0 for lru_gen; a regular file with content is a
            # copy (a fixture tree, a wrong paths.debugfs) that a write would corrupt.
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                raise NotKernelFile(errno.ENOTTY, f"{self.path} is a regular file with content, not "
                                                  f"debugfs lru_gen; refusing to write to it")
            os.write(fd, command.encode())
        finally:
            os.close(fd)


class DryRunWriter(Writer):
    """`aging.dry_run: true`: log what would be written, change nothing."""

    def __init__(self):
        # Only the latest ones: a dry-run daemon runs for months and must not grow.
        self.commands: collections.deque[str] = collections.deque(maxlen=1000)

    def _write(self, command: str) -> None:
        self.commands.append(command)
        log.info("dry run: would write %r to lru_gen", command)


class RecordingWriter(Writer):
    """For tests: records commands; `fail` maps a command to the errno it raises (once per entry)."""

    def __init__(self, fail: dict[str, list[int]] | None = None):
        self.commands: list[str] = []
        self.fail = {k: list(v) for k, v in (fail or {}).items()}

    def _write(self, command: str) -> None:
        self.commands.append(command)
        pending = self.fail.get(command)
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code) if code else "error")


def make_writer(fs: FS, dry_run: bool) -> Writer:
    return DryRunWriter() if dry_run else FileWriter(fs.lru_gen)
