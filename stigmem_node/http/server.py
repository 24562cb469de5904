"""Serving the app: listening sockets bound before anything is created, and an HTTP/1.1
protocol that bounds how long a request may take to arrive and how many connections are open.

``serve`` binds its sockets first (``bind``), so a port in use or a host that does not
resolve fails before a database, an identity or an admin key exists, and hands the bound
sockets to uvicorn (no check-then-bind race).

The protocol is uvicorn's httptools protocol with two additions:

- **Request deadline.** From the moment a connection opens, and again from each response,
  the whole next request (request line, headers and body) must arrive within
  ``request_timeout_s``.  Otherwise the connection is closed, after a ``408
  request_timeout`` if a request had begun.  One timer per request: armed when the
  connection opens or a response completes, cancelled when the request is complete.
  Handling time is not limited (the timer is off while the app works).
- **Connection cap.** A connection beyond ``max_connections`` open ones gets ``503
  server_busy`` with ``Retry-After`` at once and is closed; it never reaches the parser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from stigmem_node import error_codes
from stigmem_node.errors import ConfigError
from stigmem_node.http.middleware import new_request_id

log = logging.getLogger("stigmem_node.http.server")

BACKLOG = 2048
REFUSED_LINGER_S = 2.0  # how long a refused connection is kept to let the client read the 503
FD_MARGIN = 256  # file descriptors kept for the database, log files and refused connections


# -- binding --------------------------------------------------------------------------
def bind(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to; ``ConfigError`` (one
    sentence) if it does not resolve or an address cannot be bound."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal written as in a URL
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError("host_unresolvable", f"cannot resolve host {host!r}: {_reason(exc)}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # As asyncio does: an IPv6 socket never also takes the IPv4 port.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen(backlog)
            except OSError as exc:
                ip, port_ = str(address[0]), str(address[1])  # an IPv4 or IPv6 socket address
                shown = f"[{ip}]:{port_}" if family == socket.AF_INET6 else f"{ip}:{port_}"
                raise ConfigError("address_unavailable", f"cannot listen on {shown}: {_reason(exc)}") from None
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else text


def raise_fd_limit(max_connections: int) -> None:
    """Let the process hold ``max_connections`` sockets plus a margin, if the hard limit allows."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < wanted:
            log.warning("open-file limit %d is below max connections %d + %d; lower STIGMEM_MAX_CONNECTIONS "
                        "or raise the limit (ulimit -n)", target, max_connections, FD_MARGIN)


# -- the protocol ---------------------------------------------------------------------
def _response(code: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole error answer written by the protocol itself, which then closes the connection;
    status and any ``Retry-After`` are the registry's for ``code``."""
    entry = error_codes.REGISTRY[code]
    status = HTTPStatus(error_codes.http_status(code))
    body = json.dumps({"error": code, "detail": code, "message": message}, separators=(",", ":")).encode()
    extra = [] if entry.retry_after is None else [(b"retry-after", str(entry.retry_after).encode())]
    head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
    for name, value in (*default_headers, (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *extra, (b"connection", b"close"),
                        (b"x-request-id", new_request_id().encode())):
        head.append(name + b": " + value + b"\r\n")
    return b"".join(head) + b"\r\n" + body


class _Notices:
    """At most one warning a minute per kind, with the number of events since the last."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def note(self, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -self.every_s) >= self.every_s:
            log.warning("%s (%d in the last %.0f s)", text, self.counts[kind], self.every_s)
            self.counts[kind] = 0
            self.last[kind] = now


class _Refused(asyncio.Protocol):
    """A connection over the cap, after its 503: reads and drops what the client sends
    (so closing does not reset the connection before the client read the answer) until the
    client closes or the linger time is over."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger_s: float) -> None:
        self.timer = loop.call_later(linger_s, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


def protocol_class(request_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """The HTTP/1.1 protocol class for uvicorn's ``http=`` (one per server)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # a broken install: uvicorn[standard] brings httptools
        raise ConfigError("http_parser_missing", "the HTTP parser httptools is not installed; "
                          "reinstall stigmem-node with its dependencies") from None

    notices = _Notices()
    timeout_text = f"{request_timeout_s:g}"

    class DeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _in_message = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self._refuse(transport)
                return
            super().connection_made(transport)
            self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._in_message = True
            super().on_message_begin()

        def on_message_complete(self) -> None:
            self._in_message = False
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            # Wait for the next request, unless a complete pipelined one is now being handled.
            if self._deadline is None and (self._in_message or not pipelined) and not self.transport.is_closing():
                self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def _timed_out(self) -> None:
            self._deadline = None
            transport = self.transport
            if transport.is_closing():
                return
            if self._in_message:  # part of a request arrived: say why, unless a response is under way
                cycle = self.cycle
                answer = True
                if cycle is not None and cycle.scope is self.scope:  # headers complete, body not
                    answer = not cycle.response_started
                    cycle.disconnected = True  # the app now reads a disconnect and writes nothing
                if answer:
                    transport.write(_response(
                        "request_timeout", f"the request was not complete within {timeout_text} s",
                        self.server_state.default_headers))
                notices.note("timeout", f"closed connections whose request was not complete within {timeout_text} s")
            transport.close()

        def _refuse(self, transport: asyncio.Transport) -> None:
            transport.write(_response(
                "server_busy", f"the node has {max_connections} open connections, its limit; retry later",
                self.server_state.default_headers))
            if transport.can_write_eof():
                transport.write_eof()
            transport.set_protocol(_Refused(transport, self.loop, min(REFUSED_LINGER_S, request_timeout_s)))
            notices.note("busy", f"refused connections beyond the limit of {max_connections} (503 server_busy)")

    return DeadlineProtocol


# -- the server -----------------------------------------------------------------------
def build_server(app: Any, *, request_timeout_s: float, max_connections: int, log_level: str = "info",
                 access_log: bool = False, own_logging: bool = False,
                 on_shutdown: Callable[[], None] | None = None):
    """A uvicorn server for ``app`` with the protocol above; run it with ``.run(sockets=...)``.
    ``own_logging``: uvicorn's records go to the root logger's handler (``stigmem_node.logs``)
    instead of uvicorn's own.  ``on_shutdown`` runs as the shutdown begins, before open
    requests are waited for (it answers the long-polls, so they never hold a stop up)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    extra: dict[str, Any] = {"log_config": None} if own_logging else {}
    config = uvicorn.Config(
        app, http=protocol_class(request_timeout_s, max_connections), ws="none", **extra,
        log_level=log_level, access_log=access_log, server_header=False,
        proxy_headers=False,  # client addresses from trusted proxies: stigmem_node.http.forwarded
        backlog=BACKLOG,
    )
    return Server(config)


def serve(node: Any, sockets: list[socket.socket], *, access_log: bool = False) -> None:
    """Run the node's app on already bound ``sockets`` until SIGTERM or SIGINT."""
    import signal

    from stigmem_node.http import create_app

    settings = node.settings
    raise_fd_limit(settings.max_connections)
    server = build_server(create_app(node), request_timeout_s=settings.request_timeout_s,
                          max_connections=settings.max_connections, log_level=settings.log_level,
                          access_log=access_log, own_logging=True, on_shutdown=node.new_facts.close)
    # uvicorn re-raises the SIGTERM/SIGINT it handled once it has shut down; with a no-op
    # handler in place the re-raise does nothing and a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=sockets)
