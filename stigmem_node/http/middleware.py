"""Pure ASGI middleware: request body cap and request ids."""

from __future__ import annotations

import itertools
import json
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stigmem_node.error_codes import http_status

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
