"""Discovery: /.well-known/stigmem and /healthz."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node import __version__

FEDERATION_VERSION = "2.1"


def well_known_doc(node) -> dict:
    ident = node.identity
    return {
        "version": "1.0",
        "node_id": ident.node_id,
        "node_url": ident.node_url,
        "auth": "required",
        "federation": "enabled",
        "federation_pubkey": ident.public_key,
        "federation_version": FEDERATION_VERSION,
        "federation_endpoints": {"peers": "/v1/federation/peers", "facts": "/v1/federation/facts", "push": None},
        "entity_uri": ident.node_url,
        "key_id": ident.key_id,
        "pubkey_fingerprint": ident.fingerprint,
        "previous_keys": [k.as_dict() for k in ident.past_keys],
        "declaration": node.declaration().as_dict(),
        "implementation": {"name": "stigmem-node", "version": __version__},
    }


async def well_known(request: Request) -> JSONResponse:
    return JSONResponse(well_known_doc(request.app.state.node))


async def manifest(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.node.manifest())


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "node_id": request.app.state.node.identity.node_id})
