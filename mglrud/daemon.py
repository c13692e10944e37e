"""The daemon: a loop that ages on schedule and publishes Snapshots, an HTTP server that renders them.

Signal handlers only set events (SIGTERM/SIGINT: stop, SIGHUP: reload); the
loop acts on them between cycles. A reload parses and validates the whole new
config before swapping it in; a bad one is logged and the old one stays.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

from mglrud import systemd
from mglrud.collectors import Published, build_registry
from mglrud.config import Config, ConfigError
from mglrud.cycle import Engine
from mglrud.http import serve

log = logging.getLogger(__name__)


class ListenError(Exception):
    """The HTTP port cannot be bound; the message names address, port and cause."""


class Daemon:
    def __init__(self, config: Config, reload_config: Callable[[], Config], engine: Engine | None = None):
        self.config = config
        self.reload_config = reload_config
        self.engine = engine or Engine(config)
        self.published = Published()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()

    def _on_signal(self, signum, _frame) -> None:
        (self.reload if signum == signal.SIGHUP else self.stop).set()
        self.wake.set()

    def _reload(self) -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = self.reload_config()
        except ConfigError as e:
            log.error("reload failed, keeping the running config: config: %s", e)
        else:
            if (new.listen.address, new.listen.port) != (self.config.listen.address, self.config.listen.port):
                log.warning("listen address changes need a restart; still serving on %s:%d",
                            self.config.listen.address, self.config.listen.port)
            self.config = new
            self.engine.configure(new)
            log.info("reloaded %s", new.source)
        systemd.notify("READY=1")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # The first cycle only reads (every memcg's first aging waits for its phase),
        # so /metrics has data from the moment the port is open.
        self.published.publish(self.engine.cycle(age=False))
        cfg = self.config
        try:
            server, _ = serve(cfg.listen.address, cfg.listen.port, build_registry(self.published), self.published)
        except OSError as e:
            raise ListenError(f"cannot serve on {cfg.listen.address}:{cfg.listen.port}: {e.strerror}") from None
        log.info("serving http://%s:%d/metrics and /snapshot.json", cfg.listen.address, server.server_port)
        systemd.notify("READY=1", f"STATUS=serving on {cfg.listen.address}:{server.server_port}")
        next_publish = time.monotonic() + self.config.snapshot_interval
        try:
            while not self.stop.is_set():
                if self.reload.is_set():
                    self.reload.clear()
                    self._reload()
                now = time.monotonic()
                if self.engine.due_in() <= 0 or now >= next_publish:
                    try:
                        self.published.publish(self.engine.cycle())
                    except Exception:
                        # A bug, not a kernel condition (those are counted in the cycle):
                        # keep serving; mglrud_snapshot_age_seconds shows the stall.
                        log.exception("cycle failed; keeping the previous snapshot")
                        self.wake.wait(self.config.snapshot_interval)  # not a tight loop of tracebacks
                    next_publish = time.monotonic() + self.config.snapshot_interval
                timeout = min(self.engine.due_in(), next_publish - time.monotonic())
                self.wake.wait(max(0.05, timeout))  # floor: never spin
                self.wake.clear()
        finally:
            systemd.notify("STOPPING=1")
            server.shutdown()
            server.server_close()
        log.info("stopped")
        return 0
