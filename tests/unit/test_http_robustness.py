"""http.py under misbehaving clients: silent connections time out, garbage gets a 400, the server
keeps answering; many connections at once are queued, not dropped (listen backlog)."""

import socket
import threading
import time
import urllib.request

import pytest

from mglrud import http
from mglrud.collectors import Published


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", 0.5)
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


def test_client_hanging_up_mid_response_does_not_log_a_traceback(server, caplog):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    time.sleep(0.5)
    assert _get(server) == 200
    assert "Traceback" not in caplog.text


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
