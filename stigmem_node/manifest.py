"""The self-signed organisation manifest that reference nodes fetch at approval.

A reference node binds a peer's origin key through ``/.well-known/stigmem-manifest.json``:
it requires ``public_key`` to equal the key it registered and the peer's node_id to be
among ``entities``, and verifies ``signature`` (Ed25519, base64url) over the canonical
JSON of every other member.  Without it, a reference node silently drops our facts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from stigmem_node.clock import iso_seconds
from stigmem_node.encoding import b64url_encode, jcs
from stigmem_node.keys import Signer

VALIDITY: Final = timedelta(days=30)


def build(signer: Signer, now: datetime, *, node_id: str, node_url: str) -> dict[str, Any]:
    """The manifest of ``node_id`` at ``node_url`` for ``signer``'s key, valid from ``now``."""
    body: dict[str, Any] = {
        "entities": [node_url, node_id],
        "entity_uri": node_url,
        "expires_at": iso_seconds(now + VALIDITY),
        "issued_at": iso_seconds(now),
        "key_id": signer.key_id,
        "public_key": signer.public_key,
        "rotation_events": [],
    }
    body["signature"] = b64url_encode(signer.sign(jcs(body)))
    return body
