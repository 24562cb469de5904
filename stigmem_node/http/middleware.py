"""Pure ASGI middleware: request body cap, request ids and the access log."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stigmem_node.error_codes import http_status
from stigmem_node.logs import access_logged

access_log = logging.getLogger("stigmem_node.access")

MAX_BODY_BYTES = 1024 * 1024
_RID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Request ids: a random per-process prefix and a counter (unique, and cheaper than a UUID).
_RID_PREFIX = os.urandom(6).hex()
_RID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_RID_PREFIX}-{next(_RID_COUNTER):x}"


async def _send_error(send: Send, code: str, message: str) -> None:
    """An error answer written before the app runs (so not by ``http.errors``); the status
    is the registry's for ``code``."""
    data = json.dumps({"error": code, "detail": code, "message": message}).encode()
    await send({
        "type": "http.response.start", "status": http_status(code),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
    })
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whatever Content-Length claims.

    The body is read (up to the cap) before the app runs and replayed to it, so the app
    never sees a partial body and a liar's Content-Length changes nothing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = f"request bodies are limited to {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _send_error(send, "bad_request", "invalid Content-Length")
                    return
                if int(value) > self.max_bytes:
                    await _send_error(send, "body_too_large", too_large)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, "body_too_large", too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestId:
    """Echo a sane incoming ``X-Request-Id`` or make one, on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value if _RID_RE.match(value.decode("latin-1")) else b""
                break
        rid = rid or new_request_id().encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The template of the route ``scope`` was served by (``/v1/facts/{fact_id}``), or None
    when no route has its path: never the raw path, which may hold anything a client sent."""
    partial: str | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None)
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path", None)  # the path matched, the method did not (405)
    return partial


class AccessLog:
    """One ``http_request`` record per answered request, as ``mode`` says: ``off``, ``errors``
    (status 400 and above, or no answer) or ``all``.  Fields: method, route template, status,
    duration, request id (the one in ``X-Request-Id``: runs inside ``RequestId``) and the
    peer's node id once a peer token was accepted (``scope["state"]["peer"]``)."""

    def __init__(self, app: ASGIApp, mode: str = "errors", routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.mode = mode
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.mode == "off":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500  # starlette's outer error middleware answers 500
            raise
        finally:
            if access_logged(self.mode, status):
                self._log(scope, status, (time.perf_counter() - started) * 1000)

    def _log(self, scope: Scope, status: int, duration_ms: float) -> None:
        state = scope.get("state", {})
        route = route_template(self.routes, scope)
        peer = state.get("peer")
        method = scope["method"]
        fields = {"event": "http_request", "request_id": state.get("request_id"), "peer": peer,
                  "route": route, "method": method, "status": status, "duration_ms": round(duration_ms, 3)}
        if state.get("actor"):
            fields["actor"] = state["actor"]
        who = f" peer={peer}" if peer else ""
        access_log.log(logging.WARNING if status >= 500 else logging.INFO,
                       "%s %s %s %.1f ms request_id=%s%s", method, route or "(no route)", status or "-",
                       duration_ms, fields["request_id"], who, extra=fields)
