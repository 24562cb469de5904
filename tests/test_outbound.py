"""Outbound fetches (invariant 13): timeouts, size caps, redirects, plain http."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from stigmem_node.errors import OutboundError
from stigmem_node.outbound import ERROR_BODY_MAX_BYTES, check_url, fetch_well_known, get_json, post
from tests.nodes import free_port


async def trickle(request):
    async def body():
        yield b'{"node_id": "'
        for _ in range(40):
            await asyncio.sleep(0.1)
            yield b"x"
        yield b'"}'

    return StreamingResponse(body(), media_type="application/json")


async def echo(request):
    return Response(await request.body(), status_code=202, headers={"X-Got": request.headers.get("x-test", "")})


def app(other_port: int) -> Starlette:
    return Starlette(routes=[
        Route("/ok/.well-known/stigmem", lambda r: JSONResponse({"node_id": "n"})),
        Route("/big/.well-known/stigmem", lambda r: Response(b'{"x":"' + b"a" * 200_000 + b'"}',
                                                             media_type="application/json")),
        Route("/slow/.well-known/stigmem", trickle),
        Route("/same/.well-known/stigmem", lambda r: RedirectResponse("/ok/.well-known/stigmem")),
        Route("/away/.well-known/stigmem",
              lambda r: RedirectResponse(f"http://127.0.0.1:{other_port}/ok/.well-known/stigmem")),
        Route("/notjson/.well-known/stigmem", lambda r: Response(b"<html>", media_type="text/html")),
        Route("/array/.well-known/stigmem", lambda r: JSONResponse([1, 2])),
        Route("/error/.well-known/stigmem", lambda r: JSONResponse({}, status_code=500)),
        Route("/echo", echo, methods=["POST"]),
        Route("/big-answer", lambda r: Response(b"a" * 200_000, status_code=202), methods=["POST"]),
        Route("/slow-answer", trickle, methods=["POST"]),
        Route("/moved", lambda r: RedirectResponse("/echo", status_code=307), methods=["POST"]),
    ])


@pytest.fixture(scope="module")
def server():
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app(free_port()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def fetch(url: str, timeout: float = 2.0):
    return asyncio.run(fetch_well_known(url, timeout_s=timeout, allow_insecure_http=False))


def code_of(url: str, timeout: float = 2.0) -> str:
    with pytest.raises(OutboundError) as exc:
        fetch(url, timeout)
    return exc.value.code


def test_inv13_well_known_fetch_guard_rails(server):
    assert fetch(server + "/ok") == {"node_id": "n"}
    assert fetch(server + "/same") == {"node_id": "n"}  # same origin: followed
    assert code_of(server + "/away") == "redirect_refused"  # another port is another origin
    assert code_of(server + "/big") == "response_too_large"
    assert code_of(server + "/notjson") == "invalid_response"
    assert code_of(server + "/array") == "invalid_response"
    assert code_of(server + "/error") == "fetch_failed"
    assert code_of(f"http://127.0.0.1:{free_port()}") == "fetch_failed"


def test_inv13_the_timeout_bounds_the_whole_fetch_not_each_read(server):
    # The body trickles for 4 s, each read well within 1 s: only a deadline on the whole fetch
    # turns it into a timeout (a per-read timeout would let it complete).
    assert code_of(server + "/slow", timeout=1.0) == "fetch_timeout"


def test_inv13_plain_http_only_to_loopback_unless_allowed():
    check_url("http://127.0.0.1:8765", allow_insecure_http=False)
    check_url("http://localhost:8765", allow_insecure_http=False)
    check_url("http://[::1]:8765", allow_insecure_http=False)
    check_url("https://node.example.org", allow_insecure_http=False)
    check_url("http://node.example.org", allow_insecure_http=True)
    for url, code in [("http://node.example.org", "insecure_peer_url"), ("http://10.0.0.5", "insecure_peer_url"),
                      ("ftp://node.example.org", "invalid_peer_url"), ("https://", "invalid_peer_url")]:
        with pytest.raises(OutboundError) as exc:
            check_url(url, allow_insecure_http=False)
        assert exc.value.code == code
    with pytest.raises(OutboundError):
        asyncio.run(get_json("http://node.example.org/x", timeout_s=1, max_bytes=10, allow_insecure_http=False))


def test_a_post_sends_its_body_and_headers_and_keeps_a_bounded_answer(server):
    def send(path: str, timeout: float = 2.0):
        return asyncio.run(post(server + path, b'{"n":1}', timeout_s=timeout, allow_insecure_http=False,
                                headers={"X-Test": "yes"}))

    answer = send("/echo")
    assert (answer.status, answer.body, answer.headers["x-got"]) == (202, b'{"n":1}', "yes")
    # An answer of any size is read up to the cap for error bodies, and no further.
    assert len(send("/big-answer").body) == ERROR_BODY_MAX_BYTES
    # A redirect is returned, never followed (the body is not sent anywhere else).
    moved = send("/moved")
    assert moved.status == 307 and moved.body == b""
    # One deadline bounds the whole exchange: an answer trickled over 4 s fails at 0.5 s.
    with pytest.raises(OutboundError) as info:
        send("/slow-answer", timeout=0.5)
    assert info.value.code == "fetch_timeout"
