"""http.py under misbehaving clients: silent connections time out, garbage gets a 400, the server
keeps answering; many connections at once are queued, not dropped (listen backlog)."""

import socket
import threading
import time
import urllib.request

import pytest

from mglrud import http, listener
from mglrud.collectors import Published


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 0.5)
    published = Published()
    srv, _ = http.serve("127.0.0.1", 0, published)
    yield srv.server_port
    srv.shutdown()
    srv.server_close()


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.status


def test_silent_client_is_dropped(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.settimeout(10)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # the server closed it
        assert time.monotonic() - t0 < 5
    assert _get(server) == 200


def test_garbage_request_gets_400_and_server_goes_on(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.settimeout(10)
        s.sendall(b"\x00\xff not http at all\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert b"Error code: 400" in data  # an HTTP/0.9-style answer: the request had no valid version
    assert _get(server) == 200


def test_client_hanging_up_mid_response_does_not_log_a_traceback(monkeypatch, caplog):
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 0.5)
    caplog.set_level("DEBUG", logger="mglrud")
    srv, _ = http.serve("127.0.0.1", 0, Published())
    try:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", srv.server_port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        # the positive signal: the server is done with all 20 (each answered or dropped, its slot freed)
        deadline = time.monotonic() + 30
        while srv.open_connections:
            assert time.monotonic() < deadline, f"{srv.open_connections} connections still open"
            time.sleep(0.05)
        assert _get(srv.server_port) == 200
        assert "Traceback" not in caplog.text and "request failed" not in caplog.text
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_burst_of_connections_is_queued_not_dropped(server):
    """200 connections opened at once: socketserver's default backlog of 5 made some wait for
    SYN retransmits (1 s, 3 s, ...); with 128 and the kernel's own queue they all get answers."""
    results: list[float] = []
    errors: list[Exception] = []
    go = threading.Barrier(201)

    def one():
        go.wait()
        t0 = time.monotonic()
        try:
            assert _get(server) == 200
            results.append(time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - counted
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 200


# ---------------------------------------------------------------- issue 18 item 2: slowloris, caps, deadlines

def _dribble(socks: list[socket.socket], stop: threading.Event) -> None:
    """Slowloris: each socket sends one more header byte every 0.1 s and never ends its head."""
    while not stop.wait(0.1):
        for s in socks:
            try:
                s.send(b"X")
            except OSError:
                pass


def _closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def test_scrapes_answer_while_30_slowloris_sockets_dribble_and_those_are_cut_off(monkeypatch):
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 2.0)
    published = Published()
    srv, _ = http.serve("127.0.0.1", 0, published)
    port = srv.server_port
    stop = threading.Event()
    socks = []
    try:
        threads_before = threading.active_count()
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)
        dribbler = threading.Thread(target=_dribble, args=(socks, stop), daemon=True)
        dribbler.start()
        # Real scrapes keep answering meanwhile, and no thread is spent on a dribbling socket.
        assert [_get(port) for _ in range(20)] == [200] * 20
        assert threading.active_count() <= threads_before + 1  # the dribbler; the server's threads are fixed
        # Each slowloris socket has a total deadline, however busily it dribbles.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(_closed_by_server(s) for s in socks):
            time.sleep(0.2)
        assert all(_closed_by_server(s) for s in socks)
        assert _get(port) == 200
    finally:
        stop.set()
        for s in socks:
            s.close()
        srv.shutdown()
        srv.server_close()


def test_connections_beyond_the_cap_wait_in_the_backlog_and_are_then_answered(monkeypatch, caplog):
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(listener, "MAX_CONNECTIONS", 4)
    published = Published()
    srv, _ = http.serve("127.0.0.1", 0, published)
    port = srv.server_port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]  # 3x the cap, all silent
    try:
        # The cap holds 4 of them; a scrape queues behind the rest and is answered once
        # the deadlines free the slots (12 silent / 4 slots x 1 s: a few seconds).
        assert _get(port) == 200
        for s in silent:
            s.settimeout(30)
            assert s.recv(10) == b""  # each one closed by its deadline, none answered
        assert "Traceback" not in caplog.text
        assert srv.max_connections == 4
    finally:
        for s in silent:
            s.close()
        srv.shutdown()
        srv.server_close()


def test_seeded_garbage_requests_get_no_traceback_and_the_server_goes_on(server, caplog):
    """500 requests mutated from a valid one (seeded): bytes flipped, cut, repeated, CR/LF/NUL
    inserted. Each gets an HTTP answer or a closed connection; none a traceback."""
    import random

    rng = random.Random(18)
    base = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/openmetrics-text\r\n" \
           b"Accept-Encoding: gzip\r\nAuthorization: Basic dTpw\r\n\r\n"
    caplog.set_level("DEBUG", logger="mglrud.http")
    answers = []
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            op, i = rng.randrange(4), rng.randrange(len(data))
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                data[i:i] = rng.choice([b"\r\n", b"\n", b"\0", b":", b" ", b"\xff" * 3, b"%", b"/../"])
            elif op == 2:
                del data[i:i + rng.randint(1, 20)]
            else:
                data[i:i] = data[i:i + rng.randint(1, 40)] * rng.randint(1, 50)
        with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
            try:
                s.sendall(bytes(data))
                s.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            # the server ended the connection (the recv loop returned): an HTTP/1.0 answer, an
            # HTTP/0.9 body for a request line without a version, or nothing
            answers.append(answer[:9])
    assert len(answers) == 500
    assert sum(a == b"HTTP/1.0 " for a in answers) > 250, set(answers)  # most still parse as HTTP
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    assert _get(server) == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "FOO"])
def test_other_methods_get_405_naming_get_and_head_not_a_server_error(server, method):
    """http.server answers a method it has no do_<METHOD> for with 501, a 5xx: a proxy in front
    counts it as the server failing (found by tests/unit/test_http_fuzz.py)."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.0 405 "), head
    assert "\r\nAllow: GET, HEAD" in head
    assert _get(server) == 200
