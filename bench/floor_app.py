"""The floor for bench/pull.py: the same page, with authentication replaced by one raw
Ed25519 verification of a fixed signature.  Run as: python bench/floor_app.py DB PORT"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stigmem_node.config import Settings
from stigmem_node.node import Node
from stigmem_node.peer_auth import AuthenticatedPeer
from stigmem_node.tokens import PeerAuth, VerifiedToken


def build(db: Path) -> Starlette:
    node = Node(Settings(db_path=db))
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = b"x" * 300
    signature = key.sign(message)
    scopes = ("company", "public")
    peer = AuthenticatedPeer(
        VerifiedToken(PeerAuth("floor", "floor", "active", ()), {}, "n", 0, scopes, "k"), scopes
    )

    async def page(request: Request) -> Response:
        public.verify(signature, message)
        limit = int(request.query_params.get("limit", "100"))
        body = node.publisher.page(peer, cursor=request.query_params.get("cursor"), limit=limit, scope=None)
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v1/federation/facts", page)])


if __name__ == "__main__":
    uvicorn.run(build(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)
