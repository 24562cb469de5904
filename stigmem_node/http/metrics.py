"""``GET /metrics`` and the middleware that counts HTTP requests (``stigmem_node.metrics``).

The middleware labels a request with its route *template* (``/v1/facts/{fact_id}``), never
the raw path; a request no route matches is ``unmatched``.

Who may scrape: a loopback client (127.0.0.0/8, ::1) and an address listed in
``STIGMEM_METRICS_ALLOW``, without a key; anyone else only with an API key holding
``metrics:read``.  The client address is the one ``ForwardedFor`` settled on, so behind a
trusted proxy the rule applies to the real client, not to the proxy.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stigmem_node.errors import Forbidden
from stigmem_node.http.auth import bearer, client_addr, require
from stigmem_node.http.forwarded import parse_ip
from stigmem_node.metrics import UNMATCHED, Metrics

PERMISSION = "metrics:read"
DATABASE_WAIT_S = 5.0  # within Prometheus's default scrape timeout (10 s)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that handled the request, else of the one that would have
    (a request answered before routing, e.g. 413), else ``unmatched``."""
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class HttpMetrics:
    """Pure ASGI middleware: count each request by route template, method and status, and
    observe its duration (to the end of its answer)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            if status is None:
                status = 500  # the server's error handler, outside this middleware, answers 500
            raise
        finally:
            self.metrics.request(_template(scope, self.routes), scope["method"], status,
                                 time.perf_counter() - start)


@functools.lru_cache(maxsize=16)
def allowed_networks(spec: str | None) -> tuple[Network, ...]:
    """``STIGMEM_METRICS_ALLOW`` parsed (validated by ``config``)."""
    if not spec:
        return ()
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec.split(",") if item.strip())


def address_may_scrape(addr: str, allow: str | None) -> bool:
    """Loopback, or listed in ``allow``."""
    ip = parse_ip(addr)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or any(ip in net for net in allowed_networks(allow))


async def metrics(request: Request) -> Response:
    node = request.app.state.node
    if bearer(request) is not None:  # a key, wherever from: it must be valid and hold metrics:read
        await require(request, PERMISSION)
    elif not address_may_scrape(client_addr(request), node.settings.metrics_allow):
        raise Forbidden("metrics_not_allowed", "metrics are served to loopback clients, to the addresses in "
                        f"STIGMEM_METRICS_ALLOW, and to API keys with the {PERMISSION} permission")
    # A database that does not answer a trivial read within DATABASE_WAIT_S is reported as
    # down (stigmem_database_up 0) rather than holding the scrape past the scraper's timeout.
    answers = await node.database_problem(DATABASE_WAIT_S) is None
    body = await node.lanes.read(node.metrics.exposition, database=answers)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
