"""The floor for bench/pull.py: the node's own app and page, with peer authentication
replaced by one raw Ed25519 verification of a fixed signature.

Everything else (HTTP server, middleware, routing, the page query and its encoding) is
what the real node runs, so the ratio against it is the cost of token authentication
over one signature check.  Run as: python bench/floor_app.py DB PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.config import Settings
from stigmem_node.http.server import bind, serve
from stigmem_node.node import Node
from stigmem_node.offload import Lanes
from stigmem_node.peer_auth import AuthenticatedPeer
from stigmem_node.tokens import PeerAuth, VerifiedToken


class OneSignatureCheck:
    """Stands in for PeerAuthenticator: verifies one fixed signature, admits a fixed peer."""

    def __init__(self, lanes: Lanes) -> None:
        key = Ed25519PrivateKey.generate()
        self.lanes = lanes
        self.public = key.public_key()
        self.message = b"x" * 300
        self.signature = key.sign(self.message)
        scopes = ("company", "public")
        self.peer = AuthenticatedPeer(VerifiedToken(PeerAuth("floor", "floor", "active", ()), {}, "n", 0, scopes, "k"),
                                      scopes)
        self.nonces = self  # no nonce is written: nothing to wait for at shutdown

    async def wait_idle(self) -> None:
        return None

    async def authenticate_then(self, authorization, *, method, path_qs, remote_addr, then):
        """As the node does, one hand-over to a read-lane thread: there, the signature check
        and ``then`` (the page read); no lookup, no claims, no nonce."""

        def check_then():
            self.public.verify(self.signature, self.message)
            return then(self.peer) if then is not None else None

        return self.peer, await self.lanes.read(check_then)


def build(db: Path) -> Node:
    node = Node(Settings(db_path=db, log_level="warning"))
    node.peer_auth = OneSignatureCheck(node.lanes)  # type: ignore[assignment]
    return node


if __name__ == "__main__":
    # Served exactly as `stigmem-node serve` serves (the same protocol, deadline and cap).
    serve(build(Path(sys.argv[1])), bind("127.0.0.1", int(sys.argv[2])))
