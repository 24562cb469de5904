"""Slow clients and connection floods: the request deadline and the connection cap.

Real servers on 127.0.0.1 (nodes served in process with the protocol of ``serve``, and
uvicorn in a thread with the same protocol around a small app for handler-side cases); raw
sockets play the slow clients.  Times
are asserted as lower bounds only; every wait has a generous failsafe.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from stigmem_node.config import from_env
from stigmem_node.errors import ConfigError
from stigmem_node.http.server import bind, build_server
from tests.nodes import ServedNode, run_cli

FAILSAFE_S = 60.0


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _until_closed(sock: socket.socket, first: bytes = b"", filler: bytes = b"", every_s: float = 0.1
                  ) -> tuple[float, bytes]:
    """Send ``first``, then ``filler`` every ``every_s`` while reading, until the server
    closes the connection.  Returns the seconds it stayed open and what the server sent."""
    start = time.monotonic()
    received = b""
    sock.settimeout(every_s)
    if first:
        sock.sendall(first)
    while time.monotonic() - start < FAILSAFE_S:
        if filler:
            try:
                sock.send(filler)
            except OSError:  # the server closed: what it sent is still readable or lost with the reset
                filler = b""
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    else:
        pytest.fail(f"the server kept the connection open for {FAILSAFE_S} s")
    return time.monotonic() - start, received


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _read_one_response(sock: socket.socket) -> bytes:
    """One whole response (with Content-Length) from a connection that stays open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        assert data, "closed before a response"
        raw += data
    _, headers, body = _response(raw)
    while len(body) < int(headers["content-length"]):
        data = sock.recv(65536)
        assert data, "closed in the middle of a response"
        body += data
        raw += data
    return raw


@pytest.fixture
def slow_node(start_node) -> ServedNode:
    return start_node("a", env={"STIGMEM_REQUEST_TIMEOUT_S": "1"})


def _assert_408(raw: bytes) -> None:
    status, headers, body = _response(raw)
    assert status == 408 and headers["connection"] == "close" and headers["x-request-id"]
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "request_timeout"


def test_headers_dribbled_byte_by_byte_are_cut_off_with_408(slow_node):
    sock = _connect(slow_node.url)
    with sock:
        held, raw = _until_closed(sock, b"GET /healthz HTTP/1.1\r\nHost: a\r\n", filler=b"X")
    assert held >= 0.9
    _assert_408(raw)


def test_a_body_dribbled_byte_by_byte_is_cut_off_with_408(slow_node):
    sock = _connect(slow_node.url)
    head = (f"POST /v1/facts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {slow_node.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{").encode()
    with sock:
        held, raw = _until_closed(sock, head, filler=b" ")
    assert held >= 0.9
    _assert_408(raw)


def test_a_connection_that_sends_nothing_is_closed(slow_node):
    sock = _connect(slow_node.url)
    with sock:
        held, raw = _until_closed(sock)
    assert held >= 0.9
    assert raw == b""  # nothing was asked, so nothing is answered


def test_the_deadline_starts_again_after_each_response(slow_node):
    """On a kept-alive connection, the next request has the same time to arrive as the first."""
    sock = _connect(slow_node.url)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert _read_one_response(sock).startswith(b"HTTP/1.1 200 ")
        held, raw = _until_closed(sock, b"GET /healthz HTTP/1.1\r\n", filler=b"X")
    assert held >= 0.9
    _assert_408(raw)


def test_normal_requests_still_work_under_a_short_timeout(slow_node):
    with slow_node.client() as c:
        for i in range(3):  # one keep-alive connection, several requests
            res = c.post("/v1/facts", json={"entity": f"stigmem://t/{i}", "relation": "memory:note",
                                            "value": {"type": "string", "v": "x" * 50_000},
                                            "source": "stigmem://t/agent", "scope": "local"})
            assert res.status_code in (200, 201), res.text
        assert c.get("/v1/facts").status_code == 200


# -- the deadline covers arrival only, never handling -----------------------------------
class ThreadServer:
    """Our protocol in uvicorn, in a thread, around a small app."""

    def __init__(self, app, *, request_timeout_s: float, max_connections: int = 100) -> None:
        self.sockets = bind("127.0.0.1", 0)
        self.port = self.sockets[0].getsockname()[1]
        self.server = build_server(app, request_timeout_s=request_timeout_s, max_connections=max_connections,
                                   log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + FAILSAFE_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(FAILSAFE_S)


async def _slow_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await asyncio.sleep(float(scope["query_string"].decode() or 0))
    data = json.dumps({"path": scope["path"], "got": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


@pytest.fixture
def thread_server():
    servers: list[ThreadServer] = []

    def start(**kw) -> ThreadServer:
        servers.append(ThreadServer(_slow_app, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_a_handler_slower_than_the_timeout_is_not_cut(thread_server):
    srv = thread_server(request_timeout_s=0.5)
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=FAILSAFE_S) as c:
        started = time.monotonic()
        res = c.post("/slow?1.5", content=b"x" * 1000)
        assert time.monotonic() - started >= 1.5
        assert res.status_code == 200 and res.json() == {"path": "/slow", "got": 1000}
        assert c.get("/again").status_code == 200  # the same connection serves on


def test_pipelined_requests_behind_a_slow_one_are_answered(thread_server):
    srv = thread_server(request_timeout_s=0.5)
    with srv.connect() as sock:
        _, raw = _until_closed(sock, b"GET /one?1.5 HTTP/1.1\r\nHost: a\r\n\r\n"
                                     b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200 ") == 2 and b'"/one"' in raw and b'"/two"' in raw


# -- the connection cap -----------------------------------------------------------------
def _admitted(url: str) -> socket.socket:
    """A connection the node has admitted (a 200 on it proves it), kept open with a partial request."""
    for _ in range(100):
        sock = _connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        if _read_one_response(sock).startswith(b"HTTP/1.1 200 "):
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # holds the connection until the deadline
            return sock
        sock.close()  # the readiness probe's connection was still counted: try again
        time.sleep(0.1)
    pytest.fail("no connection was admitted")


def test_connections_beyond_the_cap_get_503_server_busy_and_service_recovers(start_node):
    node = start_node("a", env={"STIGMEM_MAX_CONNECTIONS": "3"})
    held = [_admitted(node.url) for _ in range(3)]
    try:
        for _ in range(2):
            with _connect(node.url) as extra:
                _, raw = _until_closed(extra, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, body = _response(raw)
            assert status == 503 and headers["retry-after"].isdigit() and headers["connection"] == "close"
            assert headers["content-type"] == "application/json" and headers["x-request-id"]
            assert json.loads(body)["error"] == "server_busy"
        res = httpx.get(node.url + "/healthz", timeout=10)  # a client library reads the answer too
        assert res.status_code == 503 and res.json()["error"] == "server_busy"
    finally:
        held.pop().close()
    try:
        for _ in range(100):  # once one connection is gone, a new one is served
            res = httpx.get(node.url + "/healthz", timeout=10)
            if res.status_code == 200:
                break
            time.sleep(0.1)
        assert res.status_code == 200
        assert "refused connections beyond the limit of 3" in node.log()
    finally:
        for sock in held:
            sock.close()


# -- settings ---------------------------------------------------------------------------
def test_defaults_and_settings_are_validated(tmp_path):
    s = from_env({})
    assert s.request_timeout_s == 30 and s.max_connections == 1000
    s = from_env({"STIGMEM_REQUEST_TIMEOUT_S": "2.5", "STIGMEM_MAX_CONNECTIONS": "50"})
    assert s.request_timeout_s == 2.5 and s.max_connections == 50
    for env in ({"STIGMEM_REQUEST_TIMEOUT_S": "0"}, {"STIGMEM_REQUEST_TIMEOUT_S": "nan"},
                {"STIGMEM_REQUEST_TIMEOUT_S": "forever"}, {"STIGMEM_MAX_CONNECTIONS": "0"},
                {"STIGMEM_MAX_CONNECTIONS": "1.5"}, {"STIGMEM_MAX_CONNECTIONS": "100001"}):
        with pytest.raises(ConfigError):
            from_env(env)
    for flags, needle in ((("--request-timeout", "inf"), "request timeout"),
                          (("--request-timeout", "-1"), "request timeout"),
                          (("--max-connections", "0"), "max connections")):
        res = run_cli("serve", "--port", "1", *flags, db=tmp_path / "n.db", timeout=15)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert needle in res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "n.db").exists()
