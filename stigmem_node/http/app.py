"""The starlette application factory."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from stigmem_node.errors import StigmemError
from stigmem_node.http import audit, peers, wellknown
from stigmem_node.http.errors import http_error, stigmem_error, unexpected_error
from stigmem_node.http.middleware import BodyLimit, RequestId
from stigmem_node.node import Node
from stigmem_node.ratelimit import FailureLimiter


def create_app(node: Node) -> Starlette:
    routes = [
        Route("/.well-known/stigmem", wellknown.well_known, methods=["GET"]),
        Route("/healthz", wellknown.healthz, methods=["GET"]),
        Route("/v1/federation/peers", peers.register, methods=["POST"]),
        Route("/v1/federation/peers", peers.list_peers, methods=["GET"]),
        Route("/v1/federation/peers/{ref:path}/approve", peers.approve, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/suspend", peers.suspend, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/resume", peers.resume, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/revoke", peers.revoke, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}", peers.show_peer, methods=["GET"]),
        Route("/v1/federation/peers/{ref:path}", peers.remove, methods=["DELETE"]),
        Route("/v1/federation/audit", audit.audit_list, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestId), Middleware(BodyLimit)],
        exception_handlers={StigmemError: stigmem_error, HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.node = node
    app.state.auth_limiter = FailureLimiter(max_failures=10, window_s=60)
    return app
