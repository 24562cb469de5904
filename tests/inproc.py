"""A node served in process: a real database (a SQLite file, or PostgreSQL) and the real HTTP app, called through
httpx's ASGI transport; and signed peer declarations made with fresh Ed25519 keys."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from stigmem_node import declaration as d
from stigmem_node.audit import entry_dict
from stigmem_node.clock import iso_seconds
from stigmem_node.config import from_env
from stigmem_node.encoding import b64url_encode
from stigmem_node.http import create_app
from stigmem_node.node import Node
from tests.engines import provide_pepper, url_kw
from tests.fakepeer import raw_public
from tests.nodes import free_port, listening_socket


class InProcessNode:
    def __init__(self, db: Path, database_url: str | None = None) -> None:
        """The node on the SQLite file ``db``, or on PostgreSQL at ``database_url``."""
        self.db = db
        if database_url:
            provide_pepper(db)
        self.node = Node(from_env({}).with_overrides(db_path=db, **url_kw(database_url)))
        self.headers = {"Authorization": f"Bearer {self.node.first_admin_key()}"}
        self.app = create_app(self.node)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                         headers=self.headers) as client:
                return await client.request(method, path, **kw)

        return asyncio.run(send())

    def register(self, body: Any) -> httpx.Response:
        return self.request("POST", "/v1/federation/peers", json=body)

    def audit(self, event_type: str) -> list[dict[str, Any]]:
        return [entry_dict(r) for r in self.node.store.audit.page(event_type=event_type, limit=1000)]

    def peers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/federation/peers").json()["peers"]

    def close(self) -> None:
        self.node.close()


async def asgi_get(app: Any, path: str, *, client: tuple[str, int], headers: dict[str, str] | None = None
                   ) -> tuple[int, bytes]:
    """One GET through ``app`` as an ASGI server would deliver it, from ``client``: (status,
    body).  For tests that send thousands of requests: the same app and scope as httpx's ASGI
    transport gives, without a client library's own work per request."""
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": raw_path, "raw_path": raw_path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"node.test"), *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())],
        "server": ("node.test", 80), "client": client,
    }
    sent = False
    status: int | None = None
    body: list[bytes] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await done.wait()
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    assert status is not None and done.is_set()
    return status, b"".join(body)


def signed_declaration(*, node_url: str, node_id: str | None = None, key: Ed25519PrivateKey | None = None,
                       scopes: tuple[str, ...] = ("company", "public")) -> dict[str, Any]:
    """A correctly signed declaration carrying exactly the given node_url and node_id."""
    key = key or Ed25519PrivateKey.generate()
    fields = {
        "allowed_scopes": list(scopes),
        "federation_pubkey": raw_public(key),
        "node_id": node_id if node_id is not None else f"stigmem:node:test-{time.monotonic_ns()}",
        "node_url": node_url,
        "signed_at": iso_seconds(datetime.now(UTC)),
    }
    return {**fields, "declaration_sig": b64url_encode(key.sign(d.canonical_bytes(fields)))}


class ThreadServer:
    """A starlette app served by uvicorn in a thread on a reserved 127.0.0.1 port."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                     lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [listening_socket(self.port)]},
                                        daemon=True)

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
