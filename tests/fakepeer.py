"""A small, real, misbehaving peer for replication tests.

A starlette app run by uvicorn in a thread on a free 127.0.0.1 port.  It has its own
Ed25519 identity, serves ``/.well-known/stigmem`` with a valid signed declaration, and
serves ``/v1/federation/facts`` pages that it builds itself with ``stigmem_node.facts``
(correctly signed facts, or tampered ones that the test puts in).  Its behaviour can be
switched at any time: answer normally, answer a status (500, 429 with Retry-After, 401),
hang beyond the puller's timeout (until the puller gives up), send a non-JSON body, send
more facts than asked for, keep saying ``has_more`` without moving the cursor, redirect
elsewhere, or be down (``down()`` closes the listening socket; ``up()`` opens it again on
the same port, which stays reserved for the peer in between).

Every request to the facts endpoint is recorded (time, query, token claims) so that tests
can check retries, back-off and ``Retry-After``; ``open_hangs`` counts the requests that
are hanging right now.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stigmem_node import declaration as decl_mod
from stigmem_node import facts as fm
from stigmem_node import origin as om
from stigmem_node.clock import iso, iso_seconds
from stigmem_node.encoding import b64url_encode, fingerprint
from stigmem_node.hlc import HLC
from tests.nodes import free_port, listening_socket


def raw_public(key: Ed25519PrivateKey) -> str:
    return b64url_encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def token_claims(authorization: str | None) -> dict[str, Any] | None:
    """The claims of a bearer JWS, decoded without verification (for the record only)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    try:
        payload = authorization[7:].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None


def gzip_bomb(mib: int = 1100) -> bytes:
    """A body to send with ``Content-Encoding: gzip, gzip``: under 3 KB on the wire that a
    client decoding both layers turns into ``mib`` MiB of zeros (1100 MiB by default).

    The inner gzip member is built from one compressed MiB of zeros repeated (a full flush
    makes every repetition the same bytes), so building it takes a fraction of a second.
    """
    zero = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mib = deflate.compress(zero) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    inner = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + one_mib * mib + end
             + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF))
    outer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return outer.compress(inner) + outer.flush()


BOMB_HEADERS = {"Content-Encoding": "gzip, gzip"}


@dataclass
class Behaviour:
    """What the facts endpoint does for one request.

    kind: ok | status | hang | drip | raw | too_many | stuck | redirect | slow (a valid page
    after ``hang_s``)
    """

    kind: str = "ok"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang_s: float = 30.0
    interval_s: float = 0.3
    location: str = ""


@dataclass
class Hit:
    t: float
    query: dict[str, str]
    claims: dict[str, Any] | None
    kind: str


class FakePeer:
    def __init__(self, *, scopes: tuple[str, ...] = ("company", "public", "team"), name: str = "fake") -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public_key = raw_public(self.key)
        self.fingerprint = fingerprint(self.public_key)
        self.node_id = f"stigmem:node:{name}-{uuid.uuid4()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scopes = tuple(sorted(scopes))
        self.entries: list[dict[str, Any]] = []
        self.tombstones: list[Any] = []  # served as they are by /v1/federation/tombstones
        self.page_cap: int | None = None  # at most this many facts a page, whatever is asked
        self.behaviour = Behaviour()
        self.script: list[Behaviour] = []  # one-shot behaviours for the next requests, then ``behaviour``
        self.hits: list[Hit] = []
        # POST /v1/federation/notify: what this peer answers (404: it has no such endpoint, as a
        # reference node), and each notification received: (body, headers).
        self.notify_status = 404
        self.notifications: list[tuple[bytes, dict[str, str]]] = []
        self.open_hangs = 0  # requests hanging right now (the puller has not given up on them yet)
        self.in_flight = 0  # facts requests being answered right now, and the most there ever were
        self.max_in_flight = 0
        # (body, headers) served as the well-known instead of the real document, when set.
        self.well_known_raw: tuple[bytes, dict[str, str]] | None = None
        self.hlc = HLC()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/.well-known/stigmem", self._well_known, methods=["GET"]),
            Route("/v1/federation/facts", self._facts, methods=["GET"]),
            Route("/v1/federation/tombstones", self._tombstones, methods=["GET"]),
            Route("/healthz", lambda r: JSONResponse({"status": "ok"}), methods=["GET"]),
            Route("/v1/federation/notify", self._notify, methods=["POST"]),
        ])

    # -- identity ------------------------------------------------------------------------
    def declaration(self) -> dict[str, Any]:
        fields = {
            "allowed_scopes": list(self.scopes),
            "federation_pubkey": self.public_key,
            "node_id": self.node_id,
            "node_url": self.url,
            "signed_at": iso_seconds(datetime.now(UTC)),
        }
        return {**fields, "declaration_sig": b64url_encode(self.key.sign(decl_mod.canonical_bytes(fields)))}

    async def _well_known(self, request: Request) -> Response:
        if self.well_known_raw is not None:
            body, headers = self.well_known_raw
            return Response(body, media_type="application/json", headers=headers)
        return JSONResponse({
            "version": "1.0", "node_id": self.node_id, "node_url": self.url, "auth": "required",
            "federation": "enabled", "federation_pubkey": self.public_key, "federation_version": "2.1",
            "federation_endpoints": {"peers": "/v1/federation/peers", "facts": "/v1/federation/facts", "push": None},
            "entity_uri": self.url, "pubkey_fingerprint": self.fingerprint, "previous_keys": [],
            "declaration": self.declaration(),
        })

    # -- facts ---------------------------------------------------------------------------
    async def _notify(self, request: Request) -> Response:
        with self._lock:
            self.notifications.append((await request.body(), dict(request.headers)))
        return JSONResponse({"error": "not_found"} if self.notify_status == 404 else {"pull": "started"},
                            status_code=self.notify_status)

    def make(self, entity: str, scope: str = "public", v: Any = "x", *, value_type: str = "string",
             valid_until: str | None = None, fact_id: str | None = None, key: Ed25519PrivateKey | None = None,
             origin_node_id: str | None = None, origin_scopes: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A pull entry for a new fact of this peer, correctly signed unless told otherwise."""
        inp = fm.validate_new_fact({"entity": entity, "relation": "fake:says", "value": {"type": value_type, "v": v},
                                    "source": "fakepeer", "scope": scope, "valid_until": valid_until})
        fact = fm.new_fact(inp, origin_node_id=origin_node_id or self.node_id, hlc=self.hlc.tick(),
                           timestamp=iso(datetime.now(UTC)), fact_id=fact_id)
        origin = om.origin_for(fact, node_id=origin_node_id or self.node_id, entity_uri=self.url)
        if origin_scopes is not None:
            origin = fm.Origin(origin.tenant, origin.node_id, tuple(origin_scopes), origin.allowed_tenants,
                               origin.entity_uri)
        return om.pull_entry(fact, origin, om.sign_fact_origin(key or self.key, fact, origin))

    def resign(self, entry: dict[str, Any], key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """Sign an (edited) entry again, so that only the intended defect remains."""
        parsed = om.entry_from_wire(entry)
        entry["origin_sig"] = om.sign_fact_origin(key or self.key, parsed.fact, parsed.origin)
        return entry

    def add(self, *entries: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            self.entries.extend(entries)
        return list(entries)

    def page(self, cursor: str | None, limit: int) -> dict[str, Any]:
        after = int(cursor) if cursor else 0
        limit = min(limit, self.page_cap or limit)
        with self._lock:
            chunk = self.entries[after:after + limit]
            has_more = after + limit < len(self.entries)
        return {"v": 2, "facts": chunk, "cursor": str(after + len(chunk)), "has_more": has_more}

    async def _tombstones(self, request: Request) -> Response:
        since = int(request.query_params.get("since") or 0)
        limit = int(request.query_params.get("limit", "100"))
        with self._lock:
            chunk = self.tombstones[since:since + limit]
            more = since + limit < len(self.tombstones)
        return JSONResponse({"v": 2, "tombstones": chunk, "revocations": [], "cursor": str(since + len(chunk)),
                             "has_more": more})

    def tombstone(self, entry: dict[str, Any], *, key: Ed25519PrivateKey | None = None,
                  origin_node_id: str | None = None, reason: str = "right_to_erasure") -> dict[str, Any]:
        """A wire tombstone of the fact of ``entry``, signed (t2.1) by this peer unless told otherwise."""
        from stigmem_node import tombstones as tm

        tomb = tm.Tombstone(kind="fact", fact_id=entry["fact"]["id"], entity=None, cid=entry["fact"]["cid"],
                            erased_at=iso(datetime.now(UTC)), origin_node_id=origin_node_id or self.node_id,
                            reason=reason)
        return {**tomb.to_wire(), "origin_sig": tm.sign_tombstone(key or self.key, tomb)}

    def set(self, kind: str = "ok", **kw: Any) -> None:
        self.behaviour = Behaviour(kind, **kw)

    def then(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self.script.extend(behaviours)

    async def _facts(self, request: Request) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        with self._lock:
            b = self.script.pop(0) if self.script else self.behaviour
            self.hits.append(Hit(time.monotonic(), dict(request.query_params),
                                 token_claims(request.headers.get("authorization")), b.kind))
        cursor = request.query_params.get("cursor")
        limit = int(request.query_params.get("limit", "100"))
        if b.kind == "status":
            return JSONResponse({"error": f"fake_{b.status}", "detail": f"fake_{b.status}", "message": "fake"},
                                status_code=b.status, headers=b.headers)
        if b.kind == "slow":  # a valid page after hang_s, unless the puller went away meanwhile
            deadline = time.monotonic() + b.hang_s
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    return Response(b"", status_code=499)
                await asyncio.sleep(0.02)
        if b.kind == "hang":
            deadline = time.monotonic() + b.hang_s
            with self._lock:
                self.open_hangs += 1
            try:
                while (time.monotonic() < deadline and not self._stopping.is_set()
                       and not await request.is_disconnected()):
                    await asyncio.sleep(0.05)
            finally:
                with self._lock:
                    self.open_hangs -= 1
        if b.kind == "drip":
            # Headers at once, then one byte of a valid page every ``interval_s`` (slowloris):
            # every single read is quick, the whole page takes ``hang_s``.
            body = json.dumps(self.page(cursor, limit)).encode()
            pad = max(1, int(b.hang_s / b.interval_s))

            async def drip():
                for _ in range(pad):
                    if self._stopping.is_set():
                        return
                    yield b" "
                    await asyncio.sleep(b.interval_s)
                yield body

            return StreamingResponse(drip(), media_type="application/json")
        if b.kind == "raw":
            return Response(b.body, media_type="application/json", headers=b.headers)
        if b.kind == "redirect":
            return Response(b"", status_code=302, headers={"Location": b.location})
        if b.kind == "too_many":
            page = self.page(cursor, limit + 1)
            return JSONResponse(page)
        if b.kind == "stuck":
            # A cursor that stops moving: the first page has facts and cursor "0", every later
            # page (asked with cursor "0") has none and hands "0" back, always with has_more.
            page = self.page(cursor, limit)
            page["has_more"], page["cursor"] = True, cursor or "0"
            page["facts"] = page["facts"] if cursor is None else []
            return JSONResponse(page)
        return JSONResponse(self.page(cursor, limit))

    # -- lifecycle -----------------------------------------------------------------------
    def up(self) -> FakePeer:
        self._stopping.clear()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        sock = listening_socket(self.port)  # the port is reserved for this peer (free_port)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"fakepeer:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake peer did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def down(self) -> None:
        """Close the listening socket (connections are refused until ``up()``)."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = None

    def register_on(self, node, scopes: str | None = "company,public") -> dict[str, Any]:
        """Register this peer on a real node and approve it by fingerprint (as an operator would)."""
        path = "/v1/federation/peers" + (f"?scopes={scopes}" if scopes else "")
        with node.client() as c:
            res = c.post(path, json=self.declaration())
            assert res.status_code == 201 and res.json()["status"] == "pending_approval", res.text
            peer_id = res.json()["peer_id"]
            ok = c.post(f"/v1/federation/peers/{peer_id}/approve", json={"pubkey_fingerprint": self.fingerprint})
            assert ok.status_code == 200 and ok.json()["status"] == "active", ok.text
            return ok.json()
