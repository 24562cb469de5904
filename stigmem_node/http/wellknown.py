"""Discovery and health: /.well-known/stigmem, /healthz (liveness) and /readyz (readiness)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from stigmem_node import __version__
from stigmem_node.store.db import StorageUnavailable

log = logging.getLogger("stigmem_node.http")

FEDERATION_VERSION = "2.1"
# The reference's discovery fields, with our meanings (docs/protocol.md, Well-known document):
# this node reserves and interprets no entity or relation namespace, so it lists none; and
# it does not attest a fact's ``source`` (a free string the writing client chooses), as the
# reference's "off" says.  The origin signature binds the content (CID) to this node only.
NAMESPACES: list[str] = []
SOURCE_ATTESTATION = "off"


def well_known_doc(node) -> dict:
    ident = node.identity
    return {
        "version": "1.0",
        "node_id": ident.node_id,
        "node_url": ident.node_url,
        "auth": "required",
        "federation": "enabled",
        "source_attestation": SOURCE_ATTESTATION,
        "namespaces": list(NAMESPACES),
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


async def _current(request: Request):
    """The node, with the signing key that is current in the database: a key rotated by
    another process (the CLI, another replica) is served from this very request on."""
    node = request.app.state.node
    await node.lanes.read(node.reload_identity_if_rotated)
    return node


async def well_known(request: Request) -> JSONResponse:
    return JSONResponse(well_known_doc(await _current(request)))


async def manifest(request: Request) -> JSONResponse:
    return JSONResponse((await _current(request)).manifest())


async def _database_problem(request: Request) -> str | None:
    problem: str | None = await request.app.state.node.database_problem()
    if problem is not None:
        log.warning("the database does not answer: %s", problem)
    return problem


async def healthz(request: Request) -> JSONResponse:
    """Liveness: 200 while the process serves requests, whatever the database does; the
    body says whether the database answers (a trivial read, bounded to a second)."""
    problem = await _database_problem(request)
    return JSONResponse({"status": "ok", "node_id": request.app.state.node.identity.node_id,
                         "database": "ok" if problem is None else "unavailable"})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when the database answers, else 503 ``database_unavailable``."""
    if await _database_problem(request) is not None:
        raise StorageUnavailable(message="the node's database does not answer")
    return JSONResponse({"status": "ready", "node_id": request.app.state.node.identity.node_id,
                         "database": "ok"})
