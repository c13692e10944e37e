"""`mglrud run` as a child process, for tests and benches: start, wait until it serves, stop by pid.

The daemon's output goes to a log file (never a pipe nobody drains) and is read back with
errors="replace": bcc can print stray bytes while it unpacks kernel headers.

    d = DaemonProc.start(["-c", str(config), "--listen.port", "0"], tmp_path / "mglrud.log")
    try:
        urllib.request.urlopen(d.base + "/metrics")
    finally:
        d.stop()
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAIT = 120.0  # a bound for a busy machine (or a TCG guest compiling BPF), not a timing
SERVING = re.compile(r"serving https?://127\.0\.0\.1:(\d+)/")


def fixture_flags(root: Path) -> list[str]:
    """--path.* flags that point mglrud at a captured or synthetic tree under ROOT."""
    return [f"--path.{k}={root / d}" for k, d in (("procfs", "proc"), ("sysfs", "sys"), ("debugfs", "debugfs"),
                                                   ("cgroupfs", "cgroup"), ("tracefs", "tracing"))]


class NotServing(RuntimeError):
    """The daemon exited or did not serve within the wait; the message ends with its log."""


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    log: Path
    port: int = 0
    wrapped: bool = False  # started under a wrapper (unshare ...): mglrud is the wrapper's child
    wait: float = WAIT  # the bound start() was given, also wait_metrics()'s default
    # its listen.socket: the full view (addresses, file names; mglrud/redact.py), which
    # get()/snapshot()/metrics() read; `base` (TCP, no web config) serves the redacted one
    socket: str = ""

    @classmethod
    def start(cls, args: list[str], log: Path, *, wrapper: list[str] | None = None, forks: bool = True,
              env: dict | None = None, port: int = 0, wait: float = WAIT) -> DaemonProc:
        """Run `python -m mglrud run ARGS` (or WRAPPER, which runs it) and wait until it serves.

        A WRAPPER that FORKS (unshare --fork) has mglrud as its child, signalled by that
        pid; one that execs (setpriv, unshare without --fork) becomes mglrud.
        With PORT, readiness is /metrics answering on it (for log levels that hide the
        "serving" line); otherwise the port is read from that line.
        """
        sock = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--listen.socket"), "")
        if wrapper is None and not sock:
            sock = str(log.parent / "mglrud-run" / "mglrud.sock")
            args = [*args, "--listen.socket", sock]
        argv = wrapper if wrapper is not None else [sys.executable, "-m", "mglrud", "run", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        d = cls(proc, log, port, wrapper is not None and forks, wait, sock)
        try:
            d._wait_serving(wait)
        except BaseException:
            d.stop()
            raise
        return d

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def full(self) -> str:
        """The --url of the full view (`mglrud report`, `heatmap`)."""
        return f"unix:{self.socket}" if self.socket else self.base

    def get(self, path: str, timeout: float = 60.0) -> str:
        """PATH from the full view: the socket when there is one, else TCP."""
        if self.socket:
            from mglrud.client import _UnixConnection
            conn = _UnixConnection(self.socket, timeout)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                if r.status != 200:
                    raise urllib.error.HTTPError(f"unix:{self.socket}{path}", r.status, r.reason, r.headers, None)
                return r.read().decode()
            finally:
                conn.close()
        return self.get_tcp(path, timeout)

    def get_tcp(self, path: str, timeout: float = 60.0) -> str:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
            return r.read().decode()

    def metrics(self) -> str:
        return self.get("/metrics")

    def snapshot(self) -> dict:
        return json.loads(self.get("/snapshot.json"))

    def wait_agings(self, n: int, what: str, source: str = "bpf") -> str:
        """Until SOURCE is up and N more agings ran after that; returns the latest /metrics."""
        start: list[float] = []

        def done(text: str) -> bool:
            runs = metric_value(text, "mglrud_aging_runs_total")
            if metric_value(text, f'mglrud_source_up{{source="{source}"}}') != 1.0 or runs is None:
                return False
            start[:] = start or [runs]
            return runs >= start[0] + n

        return self.wait_metrics(done, f"{what}: source {source} not up or fewer than {n} agings", every=1.0)

    def wait_metrics(self, pred, what: str, wait: float | None = None, every: float = 0.5) -> str:
        """Poll /metrics until PRED(text) holds; returns that text, or fails naming WHAT with the log."""
        deadline = time.monotonic() + (wait or self.wait)
        text = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                text = self.get("/metrics")
            except (OSError, http.client.HTTPException) as e:
                # a scrape the daemon dropped (its log says why: "http: handling a connection failed")
                raise AssertionError(f"{what}: GET /metrics failed: {e!r}\n{self.log_text()[-6000:]}") from e
            if pred(text):
                return text
            time.sleep(every)
        state = "alive" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        raise AssertionError(f"{what} (mglrud {state}):\n{text}\n{self.log_text()[-4000:]}")

    def _wait_serving(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.port:
                try:
                    self.get_tcp("/metrics", timeout=10)
                    if not self.socket or os.path.exists(self.socket):  # bound right after the TCP port
                        return
                except OSError:
                    pass
            elif m := SERVING.search(self.log_text()):
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                raise NotServing(f"mglrud exited {self.proc.returncode} before serving:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise NotServing(f"mglrud did not serve within {wait:.0f}s:\n{self.log_text()[-4000:]}")

    def daemon_pid(self) -> int | None:
        """mglrud's own pid: the wrapper's first child when wrapped (unshare ignores SIGTERM)."""
        if not self.wrapped:
            return self.proc.pid
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def stop(self, wait: float = 60.0) -> int:
        """SIGTERM by pid, then SIGKILL (to the wrapper, if any) after WAIT; returns the exit status."""
        if self.proc.poll() is None:
            pid = self.daemon_pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=wait)
        return self.proc.returncode


def start_workload(argv: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a workload that prints one JSON line once it is ready; returns it and that line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    try:
        return proc, json.loads(line)
    except ValueError:
        stop_process(proc)
        raise RuntimeError(f"workload {argv} did not start: {line!r}") from None


def stop_process(proc: subprocess.Popen, wait: float = 30.0) -> None:
    """SIGTERM to this pid only, SIGKILL after WAIT."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric_value(text: str, line_prefix: str) -> float | None:
    """The value of the one sample whose line starts with LINE_PREFIX (name and labels), or None."""
    m = re.search("^" + re.escape(line_prefix) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None
