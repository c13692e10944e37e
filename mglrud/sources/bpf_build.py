"""A BPF program compiled and attached off the daemon's loop (issue 18, item 13).

The loader (sources/bpf_program.py Program, which runs mglrud/bpf_loader.py's child)
takes ~1 s, 15-50 s under TCG, and may wait up to bpf_loader.TIMEOUT -- far beyond
systemd's WatchdogSec -- so after the first start the BPF source
(sources/bpf_hotness.py) calls it in a Build's thread and takes the result in its
next cycle, the old program serving meanwhile.
"""

from __future__ import annotations

import threading

from mglrud.config import Bpf
from mglrud.fs import FS


class Build:
    """The loader called in a background thread: compiling and attaching takes ~1 s (15-50 s
    under TCG, up to bpf_loader.TIMEOUT), the thread only waits on the loader child's socket.
    A build abandoned (close(), another reload) closes its program when it arrives."""

    def __init__(self, loader, cfg: Bpf, fs: FS):
        self.cfg = cfg
        self.program = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self.thread = threading.Thread(target=self._run, args=(loader, cfg, fs), name="mglrud-bpf-build",
                                       daemon=True)
        self.thread.start()

    def _run(self, loader, cfg: Bpf, fs: FS) -> None:
        program, error = None, None
        try:
            program = loader(cfg, fs)
        except BaseException as e:  # noqa: BLE001 - handed to the loop: Unavailable is "down", a bug re-raised
            error = e
        with self._lock:
            if self._abandoned and program is not None:
                program.close()
                program = None
            self.program, self.error = program, error
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self.program is not None:
                self.program.close()
                self.program = None
