"""The starlette application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from stigmem_node.errors import StigmemError
from stigmem_node.http import admin, audit, facts, metrics, notify, peers, status, wellknown
from stigmem_node.http.errors import http_error, stigmem_error, unexpected_error
from stigmem_node.http.forwarded import ForwardedFor
from stigmem_node.http.metrics import HttpMetrics
from stigmem_node.http.middleware import AccessLog, BodyLimit, RequestId
from stigmem_node.node import Node


def create_app(node: Node) -> Starlette:
    routes = [
        # The hot path first: routes are matched in order.
        Route("/v1/federation/facts", facts.pull, methods=["GET"]),
        Route("/v1/federation/notify", notify.notify, methods=["POST"]),
        Route("/.well-known/stigmem", wellknown.well_known, methods=["GET"]),
        Route("/.well-known/stigmem-manifest.json", wellknown.manifest, methods=["GET"]),
        Route("/healthz", wellknown.healthz, methods=["GET"]),
        Route("/readyz", wellknown.readyz, methods=["GET"]),
        Route("/v1/federation/peers", peers.register, methods=["POST"]),
        Route("/v1/federation/peers", peers.list_peers, methods=["GET"]),
        Route("/v1/federation/peers/{ref:path}/approve", peers.approve, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/suspend", peers.suspend, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/resume", peers.resume, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}/revoke", peers.revoke, methods=["POST"]),
        Route("/v1/federation/peers/{ref:path}", peers.show_peer, methods=["GET"]),
        Route("/v1/federation/peers/{ref:path}", peers.remove, methods=["DELETE"]),
        Route("/v1/federation/audit", audit.audit_list, methods=["GET"]),
        Route("/v1/federation/tombstones", facts.tombstones, methods=["GET"]),
        Route("/v1/facts", facts.create_facts, methods=["POST"]),
        Route("/v1/facts", facts.list_facts, methods=["GET"]),
        Route("/v1/facts/{fact_id}", facts.get_fact, methods=["GET"]),
        Route("/v1/facts/{fact_id}", facts.erase_fact, methods=["DELETE"]),
        Route("/v1/tombstones", facts.create_tombstone, methods=["POST"]),
        Route("/v1/tombstones/{entity:path}", facts.entity_tombstones, methods=["GET"]),
        Route("/v1/admin/apikeys", admin.create_key, methods=["POST"]),
        Route("/v1/admin/apikeys", admin.list_keys, methods=["GET"]),
        Route("/v1/admin/apikeys/{key_id}/revoke", admin.revoke_key, methods=["POST"]),
        Route("/status", status.page, methods=["GET"]),
        Route("/status/session", status.sign_in_post, methods=["POST"]),
        Route("/status/session/end", status.sign_out, methods=["POST"]),
        Route("/status/peers/{peer_id}/{action}", status.peer_action, methods=["POST"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.lanes.write(node.resign_if_pending)  # a rotation whose re-signing was interrupted
        await node.start_background()
        try:
            yield
        finally:
            await node.stop_background()

    middleware = [Middleware(HttpMetrics, metrics=node.metrics, routes=routes), Middleware(RequestId),
                  Middleware(AccessLog, mode=node.settings.access_log, routes=routes),
                  Middleware(BodyLimit)]
    if node.settings.trusted_proxies:
        # Client addresses from X-Forwarded-For, only from these proxies and only IP literals.
        middleware.insert(0, Middleware(ForwardedFor, trusted_proxies=node.settings.trusted_proxies))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={StigmemError: stigmem_error, HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.node = node
    app.state.auth_limiter = node.apikey_failures
    return app
