"""The self-signed organisation manifest that reference nodes fetch at approval.

A reference node binds a peer's origin key through ``/.well-known/stigmem-manifest.json``:
it requires ``public_key`` to equal the key it registered and the peer's node_id to be
among ``entities``, and verifies ``signature`` (Ed25519, base64url) over the canonical
JSON of every other member.  Without it, a reference node silently drops our facts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from stigmem_node.clock import iso_seconds
from stigmem_node.encoding import b64url_encode, jcs
from stigmem_node.identity import NodeIdentity

VALIDITY = timedelta(days=30)


def build(identity: NodeIdentity, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entities": [identity.node_url, identity.node_id],
        "entity_uri": identity.node_url,
        "expires_at": iso_seconds(now + VALIDITY),
        "issued_at": iso_seconds(now),
        "key_id": identity.key_id,
        "public_key": identity.public_key,
        "rotation_events": [],
    }
    body["signature"] = b64url_encode(identity.sign(jcs(body)))
    return body
