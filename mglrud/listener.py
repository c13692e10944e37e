"""The bounded listener under mglrud/http.py: one selector thread, a few workers, deadlines.

Issue 18 (slowloris): a thread per connection with a per-read timeout let 30 sockets that
send a byte a second hold 30 threads for as long as they liked. Here:

- one selector thread (selectors(3), non-blocking sockets) accepts, does the TLS handshake
  (ssl's non-blocking do_handshake) and reads each request's head; a connection has
  REQUEST_TIMEOUT seconds in total from accept to a complete head, then it is closed;
- at most MAX_CONNECTIONS are open at once; beyond that the listening socket is not
  polled, so new connections wait in the kernel's accept queue (listen(2) backlog)
  instead of being refused or each getting a thread;
- WORKERS threads run `handle(sock, address, head, web)` for complete heads.

A connection dropped for any of these is logged at debug level, never with a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import selectors
import socket
import stat
import ssl
import threading
import time
from typing import Callable

from mglrud.webconfig import WebConfig, WebConfigSource

log = logging.getLogger(__name__)

# Seconds from accept to a complete request head (TLS handshake included).
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # open at once: being read, queued or answered
WORKERS = 4  # threads answering complete requests (a cached /metrics is a memcpy)
MAX_HEAD = 16 << 10  # bytes of request line + headers; a scrape sends about 300
BACKLOG = 128  # the kernel's accept queue: a burst of scrapers waits there, not dropped


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

    def __init__(self, address: str, port: int, handle: Callable, web: WebConfigSource | None = None):
        # An absolute path: a unix socket that only its owner (root) may connect to (mglrud/redact.py)
        self.path = address if address.startswith("/") else None
        if self.path is not None:
            self.socket = _unix_listener(self.path)
            self.server_address, self.server_port = self.path, 0
        else:
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
        self.handle = handle  # handle(sock, address, head, web): answers one request on a blocking socket
        self.web = web
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

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed (being read, queued or answered)."""
        with self._open_lock:
            return self._open

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
            if self.path is not None:
                address = ("unix", 0)  # AF_UNIX peers have no address; handlers and logs want a pair
            with self._open_lock:
                self._open += 1
            web = self.web.current if self.web is not None else None
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
                    self.handle(p.sock, p.address, p.buf, p.web)
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
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _unix_listener(path: str) -> socket.socket:
    """A listening unix socket at `path`, mode 0600 in a directory of mode 0700, both root's
    when mglrud runs as root: connect(2) needs write permission on the socket file, so no
    other user can reach it. A stale socket from a previous run is replaced; anything else
    at the path is refused, never removed."""
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    st = os.stat(parent)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{parent} is not ours or is writable by others; refusing to put the "
                                   f"socket there")
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no window in which others may connect
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def _sans_allowed(sock, web: WebConfig | None) -> bool:
    if web is None or web.tls is None or not web.tls.client_allowed_sans:
        return True
    cert = sock.getpeercert() or {}
    names = {value for _kind, value in cert.get("subjectAltName", ())}
    return bool(names & set(web.tls.client_allowed_sans))
