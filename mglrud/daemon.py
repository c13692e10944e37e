"""The daemon: a loop that ages on schedule and publishes Snapshots, an HTTP server that renders them.

Signals reach the loop through a self-pipe: signal.set_wakeup_fd() makes the
interpreter's C-level handler write each signal's number to a socket the loop
waits on with select(2) (SIGTERM/SIGINT: stop, SIGHUP: reload), and the Python
handlers do nothing at all. A handler that set a threading.Event could deadlock:
it runs in the main thread between bytecodes, possibly while that thread holds
the Event's lock inside wait() (the signal module's documentation warns of it).
A reload parses and validates the whole new config before swapping it in; a bad
one (whatever the loader raises) is logged and the old one stays.
"""

from __future__ import annotations

import errno
import logging
import select
import signal
import socket
import threading
import time
from typing import Callable

from prometheus_client import ProcessCollector

from mglrud import memory, systemd, webconfig
from mglrud.collectors import Published
from mglrud.collectors.reload import ReloadCollector, ReloadState
from mglrud.config import Config, ConfigError, escape
from mglrud.cycle import Engine
from mglrud.exposition import Exposition
from mglrud.http import serve

log = logging.getLogger(__name__)


class ListenError(Exception):
    """The HTTP port cannot be bound; the message names address, port and cause.

    `key` names the config key at fault when the config can fix it (a port in use,
    an address this host does not have); it is empty for other causes.
    """

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


class Daemon:
    def __init__(self, config: Config, reload_config: Callable[[], Config], engine: Engine | None = None):
        self.config = config
        self.reload_config = reload_config
        self.engine = engine or Engine(config)
        self.published = Published()
        self.stop = threading.Event()  # set by the loop itself, read by anyone
        self.reload = False
        self._wakeup: socket.socket | None = None  # the self-pipe's read end while run() runs
        self.watchdog = systemd.Watchdog.from_env()
        self.reload_problem = ""  # shown in STATUS= until a reload succeeds
        self.serving = ""  # "address:port" once the HTTP server is up
        self.reloads = ReloadState()  # mglrud_config_last_reload_*
        self.server = None  # the HTTP server once serving
        self._status = ""

    @staticmethod
    def _on_signal(signum, _frame) -> None:
        """Nothing: the signal's number is already in the self-pipe (set_wakeup_fd), and
        anything that takes a lock here can deadlock the thread it interrupted."""

    def _sleep(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a signal; act on those that came."""
        if self._wakeup is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self._wakeup], [], [], timeout)
        if not ready:
            return
        try:
            data = self._wakeup.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGHUP:
                self.reload = True
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stop.set()

    def _reload(self) -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = self.reload_config()
        except ConfigError as e:
            log.error("reload failed, keeping the running config: config: %s", e)
            self.reload_problem = f"reload failed, previous config in force: {e}"
            self.reloads.record(False)
        except Exception as e:
            # Anything else out of the loader (a bug, MemoryError, an I/O error) must not kill
            # the daemon: exit 1 is not in RestartPreventExitStatus=2, so systemd would restart
            # it into the same file in a loop. The old config stays, as for a ConfigError.
            problem = escape(f"{type(e).__name__}: {e}")[:300]
            log.error("reload failed, keeping the running config: cannot load: %s", problem)
            self.reload_problem = f"reload failed, previous config in force: {problem}"
            self.reloads.record(False)
        else:
            self.reload_problem = ""
            self.reloads.record(True)
            if (new.listen.address, new.listen.port) != (self.config.listen.address, self.config.listen.port):
                log.warning("listen address changes need a restart; still serving on %s:%d",
                            self.config.listen.address, self.config.listen.port)
            if new.web_config_file != self.config.web_config_file:
                # The file's own contents are re-read on change (http.py); a different file,
                # possibly switching TLS on or off, is a different listener.
                log.warning("web_config_file changes need a restart; still using %s",
                            self.config.web_config_file or "no web config")
            self.config = new
            self.engine.configure(new)
            if self.server is not None:  # /-/healthy measures staleness in snapshot intervals
                self.server.site.snapshot_interval = new.snapshot_interval
            log.info("reloaded %s", new.source)
        self._status = ""  # resend STATUS= with READY=1
        systemd.notify("READY=1", f"STATUS={self.status_line()}")

    def run(self) -> int:
        memory.tune()  # big buffers (response bodies, rendered snapshots) unmapped when freed
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = reader
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            self._wakeup = None
            reader.close()
            writer.close()

    def _run(self) -> int:
        # The first cycle only reads (every memcg's first aging waits for its phase),
        # so /metrics has data from the moment the port is open.
        self.published.publish(self.engine.cycle(age=False))
        cfg = self.config
        # Checked by load_config already; loaded again here for the certificates' SSLContext.
        web = (webconfig.WebConfigSource(cfg.web_config_file, webconfig.load(cfg.web_config_file))
               if cfg.web_config_file else None)
        exposition = Exposition(self.published, extra=(ReloadCollector(self.reloads), ProcessCollector(registry=None)))
        try:
            server, _ = serve(cfg.listen.address, cfg.listen.port, self.published, exposition=exposition, web=web,
                              snapshot_interval=cfg.snapshot_interval)
        except OSError as e:
            key = {errno.EADDRINUSE: "listen.port", errno.EADDRNOTAVAIL: "listen.address"}.get(e.errno, "")
            raise ListenError(f"cannot serve on {cfg.listen.address}:{cfg.listen.port}: {e.strerror}", key) from None
        scheme = "https" if web is not None and web.current.tls is not None else "http"
        self.server = server
        unix = None
        if cfg.listen.socket:  # the full view for root (mglrud/redact.py); TCP serves on without it
            try:
                unix, _ = serve(cfg.listen.socket, 0, self.published, exposition=exposition,
                                snapshot_interval=cfg.snapshot_interval)
                log.info("serving the full snapshot, with addresses, to root on unix:%s", cfg.listen.socket)
            except OSError as e:
                log.warning("listen.socket: cannot serve on %s: %s; addresses and file names are served "
                            "nowhere but to authenticated TCP clients", cfg.listen.socket, e.strerror)
        log.info("serving %s://%s:%d/metrics and /snapshot.json", scheme, cfg.listen.address, server.server_port)
        self.serving = f"{cfg.listen.address}:{server.server_port}"
        self._status = self.status_line()
        systemd.notify("READY=1", f"STATUS={self._status}")
        if self.watchdog.enabled:
            log.info("systemd watchdog: %gs; pinged from the aging loop", self.watchdog.timeout)
        next_publish = time.monotonic() + self.config.snapshot_interval
        try:
            while not self.stop.is_set():
                # Pinged only here: a cycle stuck in a kernel write stops the pings and
                # systemd restarts us (WatchdogSec= in deploy/mglrud.service).
                self.watchdog.ping()
                if self.reload:
                    self.reload = False
                    self._reload()
                now = time.monotonic()
                if self.engine.due_in() <= 0 or now >= next_publish:
                    try:
                        self.published.publish(self.engine.cycle())
                    except Exception:
                        # A bug, not a kernel condition (those are counted in the cycle):
                        # keep serving; mglrud_snapshot_age_seconds shows the stall.
                        log.exception("cycle failed; keeping the previous snapshot")
                        # not a tight loop of tracebacks (nor a watchdog kill: the loop is alive)
                        self._sleep(min(self.config.snapshot_interval, self.watchdog.interval))
                    else:
                        try:
                            # rendered here, not in the next scrapes (those expected before the next
                            # publish: the next cycle's, at the snapshot interval or at the next aging
                            # wake-up if sooner -- every cycle publishes)
                            exposition.prepare(within=min(self.config.snapshot_interval,
                                                          max(0.0, self.engine.due_in())))
                        except Exception:
                            log.exception("rendering the snapshot ahead failed; scrapes will render it")
                    # the snapshot replaced by this one is freed at the publish, after the
                    # cycle's own trims: its heap pages (the BPF source's numpy columns, below
                    # the mmap threshold: ~17 MiB at 65k cells) go back now, not a cycle later
                    memory.trim()
                    next_publish = time.monotonic() + self.config.snapshot_interval
                    self._send_status()
                timeout = min(self.engine.due_in(), next_publish - time.monotonic(), self.watchdog.interval)
                self._sleep(max(0.05, timeout))  # floor: never spin
        finally:
            systemd.notify("STOPPING=1")
            for s in (server, unix):
                if s is not None:
                    s.shutdown()
                    s.server_close()
        log.info("stopped")
        return 0

    def status_line(self) -> str:
        """systemctl status's one-line summary (STATUS=) of the latest snapshot."""
        return status_line(self.published.current, self.serving, self.reload_problem)

    def _send_status(self) -> None:
        line = self.status_line()
        if line != self._status:  # only changes: the manager logs nothing for it, but why send
            self._status = line
            systemd.notify(f"STATUS={line}")


def status_line(snap, serving: str = "", problem: str = "") -> str:
    """The STATUS= line, e.g. `serving 127.0.0.1:9746; lru_gen up; 3 memcgs in 2/2 targets; 120 agings, 0 errors`."""
    parts = [f"serving {serving}" if serving else "starting"]
    if snap is not None:
        parts.append(", ".join(f"{s.name} {'up' if s.up else 'DOWN'}" for s in snap.sources) or "no sources")
        memcgs = {m for t in snap.targets for m in t.memcgs}
        found = sum(1 for t in snap.targets if t.memcgs)
        parts.append(f"{len(memcgs)} memcgs in {found}/{len(snap.targets)} targets")
        errors = sum(n for _, n in snap.aging.errors)
        parts.append(f"{snap.aging.runs} agings, {errors} errors")
    if problem:
        parts.append(problem)
    return "; ".join(parts).replace("\n", " ")
