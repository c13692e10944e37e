"""HTTP(S): /metrics, /snapshot.json, /-/healthy, /-/ready and a landing page at /.

Listens on 127.0.0.1:9746 unless configured otherwise (listen.address,
listen.port, --web.listen-address); binding beyond loopback is the user's
explicit choice, and an exporter-toolkit web config (mglrud/webconfig.py) adds
TLS, client certificates, basic auth and response headers. Requests only
render the published Snapshot, so a scrape never ages anything.

Connections are bounded, and so is the time each may take (issue 18: slowloris):

- one selector thread accepts, does the TLS handshake and reads each request's
  head without blocking; a connection has REQUEST_TIMEOUT seconds in total from
  accept to a complete head, then it is closed (a sender dribbling a byte a
  second is cut off; no thread waits on it);
- at most MAX_CONNECTIONS are open at once; beyond that the listening socket is
  not polled, so new connections wait in the kernel's accept queue (backlog)
  instead of being refused or each getting a thread;
- WORKERS threads answer complete requests; a response has RESPONSE_TIMEOUT
  seconds in total to be sent (a reader that stops reading is cut off).

A connection dropped for any of these is logged at debug level, never with a traceback.
"""

from __future__ import annotations

import errno
import html
import io
import ipaddress
import logging
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler

from mglrud import __version__, snapshot_json
from mglrud.exposition import Exposition
from mglrud.webconfig import BasicAuth, WebConfig, WebConfigSource

log = logging.getLogger(__name__)

# Seconds from accept to a complete request head (TLS handshake included).
REQUEST_TIMEOUT = 10.0
# Seconds to send one response, in total.
RESPONSE_TIMEOUT = 60.0
MAX_CONNECTIONS = 64  # open at once: being read, queued or answered
WORKERS = 4  # threads answering complete requests (a cached /metrics is a memcpy)
MAX_HEAD = 16 << 10  # bytes of request line + headers; a scrape sends about 300
BACKLOG = 128  # the kernel's accept queue: a burst of scrapers waits there, not dropped
# /-/healthy fails when the newest snapshot is older than this many snapshot intervals
# (at least HEALTHY_FLOOR seconds: one slow cycle on a loaded host is not a sick daemon).
HEALTHY_INTERVALS = 3
HEALTHY_FLOOR = 30.0

ENDPOINTS = (
    ("/metrics", "Prometheus metrics (text 0.0.4, or OpenMetrics when asked; gzip when asked)"),
    ("/snapshot.json", "the latest snapshot as JSON"),
    ("/-/healthy", "200 while snapshots are fresh, 503 with the reason when the loop stalls"),
    ("/-/ready", "200 once the first snapshot is published, 503 before"),
)


def landing_page() -> bytes:
    rows = "".join(f'<li><a href="{p}">{p}</a>: {html.escape(d)}</li>\n' for p, d in ENDPOINTS)
    return (f"<!DOCTYPE html>\n<html><head><title>mglrud</title></head><body>\n<h1>mglrud</h1>\n"
            f"<p>Hot and cold memory per memcg and process, from the kernel's multi-gen LRU. "
            f"Version {html.escape(__version__)}.</p>\n<ul>\n{rows}</ul>\n</body></html>\n").encode()


class Site:
    """What the handler serves; the same for every connection."""

    def __init__(self, published, exposition: Exposition, web: WebConfigSource | None = None,
                 snapshot_interval: float = 10.0, wall=time.time):
        self.published = published
        self.exposition = exposition
        self.web = web
        self.snapshot_interval = snapshot_interval
        self.wall = wall
        self.auth = BasicAuth()

    def health(self) -> tuple[int, str]:
        snap = self.published.current
        if snap is None:
            return 200, "Healthy: starting, no snapshot yet (see /-/ready)\n"
        limit = max(HEALTHY_INTERVALS * self.snapshot_interval, HEALTHY_FLOOR)
        age = self.wall() - snap.taken_at
        if age > limit:
            return 503, (f"Unhealthy: the newest snapshot is {age:.0f}s old, more than {limit:g}s "
                         f"({HEALTHY_INTERVALS} x snapshot.interval {self.snapshot_interval:g}s, at least "
                         f"{HEALTHY_FLOOR:g}s): the aging loop is stuck or failing; see the log\n")
        return 200, f"Healthy: newest snapshot {max(age, 0.0):.1f}s old\n"

    def ready(self) -> tuple[int, str]:
        if self.published.current is None:
            return 503, "Not ready: no snapshot yet\n"
        return 200, "Ready\n"


class _Writer(io.RawIOBase):
    """wfile with a total deadline: a client that stops reading is cut off, not waited for."""

    def __init__(self, sock, deadline: float):
        self.sock = sock
        self.deadline = deadline

    def writable(self):
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("response deadline passed")
            self.sock.settimeout(left)
            sent += self.sock.send(view[sent:sent + (256 << 10)])
        return sent


class Handler(BaseHTTPRequestHandler):
    """One request whose head was already read (by the selector thread) into `head`."""

    server_version = f"mglrud/{__version__}"

    def __init__(self, sock, address, head: bytes, site: Site, web: WebConfig | None):
        self.site = site
        self.web = web
        self._head = head
        super().__init__(sock, address, None)

    def setup(self):
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _Writer(self.request, time.monotonic() + RESPONSE_TIMEOUT)

    def finish(self):
        pass  # the worker closes the socket

    def end_headers(self):
        for name, value in self.web.headers if self.web else ():
            self.send_header(name, value)
        super().end_headers()

    def do_HEAD(self):
        self.do_GET(body=False)

    def do_GET(self, body: bool = True):
        if self.web is not None and self.web.users and not self.site.auth.check(
                self.web.user_hashes, self.headers.get("Authorization")):
            self._send(401, "text/plain; charset=utf-8", b"Unauthorized\n", body,
                       extra=[("WWW-Authenticate", "Basic")])
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            data, headers = self.site.exposition.metrics(self.headers.get("Accept"),
                                                         self.headers.get("Accept-Encoding"))
            self._send(200, headers[0][1], data, body, extra=headers[1:] + [("Vary", "Accept, Accept-Encoding")])
        elif path == "/snapshot.json":
            snap = self.site.published.current
            if snap is None:
                self._send(503, "text/plain; charset=utf-8", b"no snapshot yet\n", body)
            else:
                self._send(200, "application/json", snapshot_json.to_json(snap).encode(), body)
        elif path == "/-/healthy":
            code, text = self.site.health()
            self._send(code, "text/plain; charset=utf-8", text.encode(), body)
        elif path == "/-/ready":
            code, text = self.site.ready()
            self._send(code, "text/plain; charset=utf-8", text.encode(), body)
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", landing_page(), body)
        else:
            self._send(404, "text/plain; charset=utf-8",
                       b"not found; try /metrics, /snapshot.json, /-/healthy or /-/ready\n", body)

    def _send(self, code: int, ctype: str, data: bytes, body: bool = True, extra=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, fmt, *args):
        log.debug("http %s " + fmt, self.client_address[0], *args)


class _Pending:
    """A connection still in the selector thread: handshaking, then reading its head."""

    __slots__ = ("sock", "address", "deadline", "web", "handshaking", "buf")

    def __init__(self, sock, address, deadline, web):
        self.sock, self.address, self.deadline, self.web = sock, address, deadline, web
        self.handshaking = isinstance(sock, ssl.SSLSocket)
        self.buf = b""


class Server:
    """The listener, its selector thread and the worker threads.

    server_port, serve_forever(), shutdown() and server_close() as socketserver's servers have them.
    """

    def __init__(self, address: str, port: int, site: Site):
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((address, port))
            self.socket.listen(BACKLOG)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.server_port = self.server_address[1]
        self.site = site
        self.max_connections = MAX_CONNECTIONS
        self._open = 0  # connections pending, queued or being answered
        self._open_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._done = threading.Event()
        self._workers = [threading.Thread(target=self._work, name=f"mglrud-http-{i}", daemon=True)
                         for i in range(WORKERS)]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------ selector thread

    def serve_forever(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        listening = False
        pending: dict[socket.socket, _Pending] = {}
        try:
            while not self._stop.is_set():
                with self._open_lock:
                    room = self._open < self.max_connections
                if room and not listening:
                    sel.register(self.socket, selectors.EVENT_READ, "listen")
                    listening = True
                elif not room and listening:  # at the cap: new connections wait in the backlog
                    sel.unregister(self.socket)
                    listening = False
                now = time.monotonic()
                timeout = min((p.deadline for p in pending.values()), default=now + 1.0) - now
                for key, events in sel.select(max(0.0, min(timeout, 1.0))):
                    try:
                        if key.data is None:
                            try:
                                os.read(self._wake_r, 512)
                            except BlockingIOError:
                                pass
                        elif key.data == "listen":
                            self._accept(sel, pending)
                        else:
                            self._advance(sel, pending, key.data)
                    except Exception:  # a bug: lose that connection, never the server
                        log.exception("http: handling a connection failed")
                        if isinstance(key.data, _Pending):
                            self._drop(sel, pending, key.data)
                now = time.monotonic()
                for p in [p for p in pending.values() if p.deadline <= now]:
                    log.debug("http %s: no complete request within %gs; closed", p.address[0], REQUEST_TIMEOUT)
                    self._drop(sel, pending, p)
        finally:
            for p in list(pending.values()):
                self._drop(sel, pending, p)
            sel.close()
            self._done.set()

    def _accept(self, sel, pending) -> None:
        while True:
            with self._open_lock:
                if self._open >= self.max_connections:
                    return
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: the connection stays queued; try again soon
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http: cannot accept: %s", e.strerror)
                    time.sleep(0.1)
                return
            with self._open_lock:
                self._open += 1
            web = self.site.web.current if self.site.web is not None else None
            sock.setblocking(False)
            if web is not None and web.context is not None:
                try:
                    sock = web.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ssl.SSLError) as e:
                    log.debug("http %s: %s", address[0], e)
                    sock.close()
                    self._closed()
                    continue
            p = _Pending(sock, address, time.monotonic() + REQUEST_TIMEOUT, web)
            pending[sock] = p
            sel.register(sock, selectors.EVENT_READ, p)
            self._advance(sel, pending, p)

    def _advance(self, sel, pending, p: _Pending) -> None:
        try:
            if p.handshaking:
                try:
                    p.sock.do_handshake()
                except ssl.SSLWantReadError:
                    sel.modify(p.sock, selectors.EVENT_READ, p)
                    return
                except ssl.SSLWantWriteError:
                    sel.modify(p.sock, selectors.EVENT_WRITE, p)
                    return
                p.handshaking = False
                sel.modify(p.sock, selectors.EVENT_READ, p)
                if not _sans_allowed(p.sock, p.web):
                    log.debug("http %s: client certificate has none of client_allowed_sans", p.address[0])
                    self._drop(sel, pending, p)
                    return
            while True:
                try:
                    chunk = p.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    return
                if not chunk:
                    self._drop(sel, pending, p)
                    return
                p.buf += chunk
                if b"\r\n\r\n" in p.buf or b"\n\n" in p.buf or len(p.buf) > MAX_HEAD:
                    break
        except (OSError, ssl.SSLError, ValueError) as e:  # resets, bad handshakes, plain HTTP to TLS
            log.debug("http %s: %s", p.address[0], e)
            self._drop(sel, pending, p)
            return
        sel.unregister(p.sock)
        del pending[p.sock]
        self._jobs.put(p)

    def _drop(self, sel, pending, p: _Pending) -> None:
        pending.pop(p.sock, None)
        try:
            sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()
        self._closed()

    def _closed(self) -> None:
        with self._open_lock:
            self._open -= 1
        try:
            os.write(self._wake_w, b"x")  # re-poll the listener if it was at the cap
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            p = self._jobs.get()
            if p is None:
                return
            try:
                p.sock.setblocking(True)
                if len(p.buf) > MAX_HEAD:
                    p.sock.settimeout(1.0)
                    p.sock.sendall(b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
                else:
                    Handler(p.sock, p.address, p.buf, self.site, p.web)
            except (OSError, ssl.SSLError, ValueError) as e:
                log.debug("http %s: %s", p.address[0], e)
            except Exception:
                log.exception("http %s: request failed", p.address[0])
            finally:
                p.sock.close()  # no TLS close_notify exchange: it would wait on the client
                self._closed()

    # ------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._done.wait(10)
        for _ in self._workers:
            self._jobs.put(None)
        for w in self._workers:
            w.join(5)

    def server_close(self) -> None:
        self.socket.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _sans_allowed(sock, web: WebConfig | None) -> bool:
    if web is None or web.tls is None or not web.tls.client_allowed_sans:
        return True
    cert = sock.getpeercert() or {}
    names = {value for _kind, value in cert.get("subjectAltName", ())}
    return bool(names & set(web.tls.client_allowed_sans))


def serve(address: str, port: int, published, *, exposition: Exposition | None = None,
          web: WebConfigSource | None = None, snapshot_interval: float = 10.0) -> tuple[Server, threading.Thread]:
    """Bind now (so errors surface at start) and serve from a background thread."""
    site = Site(published, exposition or Exposition(published), web, snapshot_interval)
    server = Server(address, port, site)
    thread = threading.Thread(target=server.serve_forever, name="mglrud-http", daemon=True)
    thread.start()
    return server, thread
