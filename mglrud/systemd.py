"""sd_notify(3) messages (READY=1, RELOADING=1, STOPPING=1, STATUS=...) when run by systemd.

Uses python3-systemd when installed; without it, notifications are skipped,
which is right for Type=simple units and for running by hand.
"""

from __future__ import annotations

try:  # optional dependency: Debian's python3-systemd
    from systemd import daemon as _sd
except ImportError:  # pragma: no cover - depends on the host
    _sd = None


def notify(*lines: str) -> None:
    if _sd is not None:
        _sd.notify("\n".join(lines))
