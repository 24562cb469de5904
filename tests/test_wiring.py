"""The node's wiring: one injected HTTP transport carries every outbound request (registry
and subscriber alike, still through the guard rails), and the node starts and stops a
serving node's background work itself.

Two real nodes (real SQLite files, real keys, the real apps) in one process: each node's
outbound transport routes a request to the other node's app by port, through httpx's ASGI
transport, so no socket is opened.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from stigmem_node.config import from_env
from stigmem_node.errors import OutboundError
from stigmem_node.federation import Actor, KeyRefresh
from stigmem_node.http import create_app
from stigmem_node.node import Node

ACTOR = Actor("cli:test", "local")


class Loopback(httpx.AsyncBaseTransport):
    """Routes each request to the app registered for its URL's port; records what it saw."""

    def __init__(self) -> None:
        self.apps: dict[int, httpx.ASGITransport] = {}
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.get("accept-encoding", "")))
        port = request.url.port
        assert port is not None
        return await self.apps[port].handle_async_request(request)


def make_node(tmp_path: Path, name: str, port: int, transport: httpx.AsyncBaseTransport) -> Node:
    settings = from_env({}).with_overrides(db_path=tmp_path / f"{name}.db", node_url=f"http://127.0.0.1:{port}")
    return Node(settings, transport=transport)


@pytest.fixture
def pair(tmp_path: Path):
    loop = Loopback()
    a = make_node(tmp_path, "a", 7101, loop)
    b = make_node(tmp_path, "b", 7102, loop)
    loop.apps[7101] = httpx.ASGITransport(app=create_app(a), client=("127.0.0.1", 50001))
    loop.apps[7102] = httpx.ASGITransport(app=create_app(b), client=("127.0.0.1", 50002))
    yield a, b, loop
    a.close()
    b.close()


def peer_up(x: Node, y: Node) -> None:
    """``x`` registers ``y`` from its declaration (fetching y's well-known) and approves it."""
    peer = asyncio.run(x.federation.register(y.declaration().as_dict(), actor=ACTOR))
    assert peer.status == "pending_approval", peer.reject_reason
    x.federation.approve(peer.id, y.identity.fingerprint, actor=ACTOR)


def test_registration_and_pulls_go_through_the_injected_transport(pair):
    a, b, loop = pair
    peer_up(a, b)
    peer_up(b, a)
    assert ("/.well-known/stigmem", "identity") in loop.seen  # the registry's fetch, guard rails on
    facts = a.facts.validate_batch([{"entity": f"e:{i}", "relation": "r", "value": {"type": "string", "v": "x"},
                                     "source": "test_wiring", "scope": "public"} for i in range(3)])
    a.facts.assert_many(facts)
    loop.seen.clear()

    result = asyncio.run(b.subscriber().run_pass())
    assert result.ok and result.totals()["new"] == 3, result.as_dict()
    assert loop.seen and all(path in ("/v1/federation/facts", "/v1/federation/tombstones") and enc == "identity"
                             for path, enc in loop.seen)
    assert {path for path, _ in loop.seen} == {"/v1/federation/facts", "/v1/federation/tombstones"}
    again = asyncio.run(b.subscriber().run_pass())
    assert again.ok and again.totals()["new"] == 0

    # The key-refresh use case answers with a typed outcome through the same transport.
    outcome = asyncio.run(b.federation.refresh_peer_keys(b.federation.get(a.identity.node_id)))
    assert outcome is KeyRefresh.UNCHANGED and outcome == "key_unchanged" and not outcome.rotated


def test_the_injected_transport_is_still_behind_the_guard_rails(tmp_path: Path):
    def gzip_answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b")

    node = make_node(tmp_path, "n", 7103, httpx.MockTransport(gzip_answer))
    try:
        with pytest.raises(OutboundError) as exc:
            asyncio.run(node.outbound.fetch_well_known("http://127.0.0.1:7104"))
        assert exc.value.code == "unexpected_content_encoding"
        with pytest.raises(OutboundError) as exc:
            asyncio.run(node.outbound.fetch_well_known("http://node.example.org"))  # plain http, not loopback
        assert exc.value.code == "insecure_peer_url"
    finally:
        node.close()


def test_the_node_starts_and_stops_its_background_work(tmp_path: Path):
    node = make_node(tmp_path, "n", 7105, httpx.MockTransport(lambda r: httpx.Response(404)))

    async def cycle() -> None:
        await node.start_background()
        assert node.apikeys.touches is not None  # last-use updates are written in the background
        with pytest.raises(RuntimeError):
            await node.start_background()
        await node.stop_background()
        assert node.apikeys.touches is None
        await node.stop_background()  # stopping twice is harmless

    try:
        asyncio.run(cycle())
        # The serving connection's auto-checkpoint was turned off for the background upkeep.
        assert node.store.db.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    finally:
        node.close()
