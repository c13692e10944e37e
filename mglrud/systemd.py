"""Talking to systemd: sd_notify(3) messages, the service watchdog, logging to the journal.

The notify protocol is one datagram of newline-separated VAR=value lines sent
to the AF_UNIX socket named in $NOTIFY_SOCKET (a path, or "@name" for the
abstract namespace): READY=1, RELOADING=1, STOPPING=1, STATUS=..., WATCHDOG=1.
It is small enough to speak directly (as sd_notify(3) documents it), so the
daemon needs no library for it and a test can bind the socket itself.
Without $NOTIFY_SOCKET (run by hand, Type=simple) every call is a no-op.

The watchdog (WatchdogSec= in the unit, sd_watchdog_enabled(3)): systemd sets
$WATCHDOG_USEC (and $WATCHDOG_PID); the service must send WATCHDOG=1 more often
than that or it is killed with SIGABRT and, with Restart=on-failure, restarted.
mglrud pings from the aging loop itself, so a loop stuck in a kernel write stops
the pings.

Logs go to the journal with priorities and fields through python3-systemd's
JournalHandler when stderr is connected to the journal ($JOURNAL_STREAM,
systemd.exec(5)) and that package is installed; otherwise to stderr.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # vsock:... and other forms are for VMs/containers managers; not used here


def notify(*lines: str) -> bool:
    """Send one notification (lines joined by newlines); True if it was sent.

    Errors are swallowed: a notification must never take the daemon down, and
    systemd itself treats a missing READY=1 as the failure.
    """
    address = _address()
    if address is None or not lines:
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    except OSError as e:
        logging.getLogger(__name__).debug("sd_notify to %r failed: %s", address, e)
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd >= 253 wants beside RELOADING=1 (older ones ignore it)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Watchdog:
    """WATCHDOG=1 pings: the loop wakes at least every half of WatchdogSec (the advice in
    sd_watchdog_enabled(3)) and calls ping(), which sends at most one per quarter of it."""

    def __init__(self, timeout: float | None, clock=time.monotonic):
        self.timeout = timeout  # seconds; None when systemd runs no watchdog for us
        self.clock = clock
        self._last = float("-inf")

    @classmethod
    def from_env(cls, environ=os.environ, pid: int | None = None) -> "Watchdog":
        usec = environ.get("WATCHDOG_USEC", "")
        owner = environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return cls(None)
        if owner and (not owner.isdigit() or int(owner) != (pid or os.getpid())):
            return cls(None)  # meant for another process (we were forked by the real main process)
        return cls(int(usec) / 1e6)

    @property
    def enabled(self) -> bool:
        return self.timeout is not None

    @property
    def interval(self) -> float:
        """How long the loop may sleep between pings (inf without a watchdog)."""
        return self.timeout / 2 if self.timeout else float("inf")

    def ping(self) -> bool:
        """Send WATCHDOG=1 if half the timeout has passed since the last ping; True if sent."""
        if not self.enabled:
            return False
        now = self.clock()
        if now - self._last < self.timeout / 4:  # the loop may wake often; don't flood the manager
            return False
        self._last = now
        return notify("WATCHDOG=1")


def journal_handler() -> logging.Handler | None:
    """A JournalHandler when stderr goes to the journal and python3-systemd is installed, else None."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return None
    if (st.st_dev, st.st_ino) != (dev, ino):
        return None  # stderr was redirected since systemd started us
    try:  # optional dependency: Debian's python3-systemd
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="mglrud")
