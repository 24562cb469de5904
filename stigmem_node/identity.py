"""The node's identity: node_id, node_url and its Ed25519 keys.

Keys live in the store's ``node_keys`` table; this module decides what to create, which
key signs and which keys still verify.  Private keys never leave this module except
through ``NodeIdentity.sign`` (``NodeIdentity`` is a ``stigmem_node.keys.Signer``) and the
token minter's ``private_key``.  The pure key helpers are in ``stigmem_node.keys``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.clock import Clock, iso, parse_rfc3339
from stigmem_node.encoding import b64url_decode, b64url_encode, fingerprint
from stigmem_node.errors import ConfigError
from stigmem_node.keys import Ed25519Signing, endorsement_payload, generate_keypair, key_id_of
from stigmem_node.store.meta import KeyRow, MetaRepo


@dataclass(frozen=True)
class VerifyKey:
    key_id: str
    public_key: str  # base64url
    retire_after: str | None


@dataclass(frozen=True)
class PastKey:
    """A key this node used before, with its endorsement of the key that replaced it."""

    key_id: str
    public_key: str
    retire_after: str | None
    endorses: str | None  # key id of the successor
    endorsement: str | None  # base64url signature by this key over endorsement_payload(successor)

    def as_dict(self) -> dict[str, str | None]:
        return {"key_id": self.key_id, "federation_pubkey": self.public_key, "retire_after": self.retire_after,
                "endorses": self.endorses, "endorsement": self.endorsement}


class NodeIdentity:
    """Who this node is, and the keys it signs and verifies with."""

    def __init__(self, node_id: str, node_url: str, active: KeyRow, previous: list[KeyRow],
                 past: list[PastKey] | None = None) -> None:
        self.node_id = node_id
        self.node_url = node_url
        self.key_id = active.key_id
        self.public_key = active.public_key
        self._private = Ed25519PrivateKey.from_private_bytes(b64url_decode(active.private_key))
        self._signing = Ed25519Signing(self._private)
        self.previous_keys = [VerifyKey(k.key_id, k.public_key, k.retire_after) for k in previous]
        self.past_keys = past or []

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, message: bytes, /) -> bytes:
        return self._signing.sign(message)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """For token minting only; never log or serialise it."""
        return self._private

    def __repr__(self) -> str:  # never show key material
        return f"NodeIdentity(node_id={self.node_id!r}, key_id={self.key_id!r})"


def load_or_create(meta: MetaRepo, clock: Clock, *, node_id: str | None, node_url: str | None,
                   default_url: str = "", record_default: bool = False, create: bool = True) -> NodeIdentity:
    """Load the identity, creating node_id and the first keypair on first start.

    A configured node_id is used only when the database has none yet; afterwards the
    stored one wins (changing a node's id would orphan every peer's record of it).
    An explicitly configured ``node_url`` is recorded and kept until another one is
    configured; without one, a serving node records ``default_url`` (http://HOST:PORT),
    unless an explicit URL is already on record.

    ``create=False`` writes nothing: the identity must exist (``ConfigError``
    ``node_identity_missing`` otherwise) and a configured ``node_url`` is used, not recorded.
    """
    if not create:
        return _load(meta, clock, node_url=node_url, default_url=default_url)
    with meta.db.transaction():
        stored_id = meta.set_if_absent("node_id", node_id or f"stigmem:node:{uuid.uuid4()}")
        if node_url:
            meta.set("node_url", node_url)
            meta.set("node_url_explicit", "1")
        elif record_default and default_url and meta.get("node_url_explicit") != "1":
            meta.set("node_url", default_url)
        url = meta.get("node_url") or default_url
        keys = meta.keys()
        if not any(k.status == "active" for k in keys):
            private, public = generate_keypair()
            row = KeyRow(key_id_of(public), public, private, clock.now_iso(), "active", None)
            meta.add_key(row)
            meta.set("current_key_id", row.key_id)
            keys = meta.keys()
        past = _past_keys(meta, keys)
    return _identity(stored_id, url, keys, clock.now(), past)


def _load(meta: MetaRepo, clock: Clock, *, node_url: str | None, default_url: str) -> NodeIdentity:
    with meta.db.transaction():
        stored_id = meta.get("node_id")
        keys = meta.keys()
        if stored_id is None or not any(k.status == "active" for k in keys):
            raise ConfigError("node_identity_missing", f"the database {meta.db.target} has no node identity yet "
                                                       "(init or serve creates it)")
        url = node_url or meta.get("node_url") or default_url
        past = _past_keys(meta, keys)
    return _identity(stored_id, url, keys, clock.now(), past)


def _past_keys(meta: MetaRepo, keys: list[KeyRow]) -> list[PastKey]:
    out = []
    for k in keys:
        if k.status == "active":
            continue
        raw = meta.get(f"endorsement:{k.key_id}")
        endorsed = json.loads(raw) if raw else {}
        out.append(PastKey(k.key_id, k.public_key, k.retire_after, endorsed.get("endorses"), endorsed.get("sig")))
    return out


def _identity(node_id: str, node_url: str, keys: list[KeyRow], now: datetime,
              past: list[PastKey] | None = None) -> NodeIdentity:
    active = [k for k in keys if k.status == "active"][-1]
    previous = [
        k for k in keys
        if k.status == "retiring" and (k.retire_after is None or parse_rfc3339(k.retire_after) > now)
    ]
    return NodeIdentity(node_id, node_url, active, previous, past)


def rotate(meta: MetaRepo, clock: Clock, *, grace: timedelta) -> NodeIdentity:
    """Make a new active key; the old one keeps verifying for ``grace`` and signs an
    endorsement of the new one, which the well-known publishes so that peers can follow."""
    now = clock.now()
    with meta.db.transaction():
        node_id = meta.get("node_id") or ""
        private, public = generate_keypair()
        row = KeyRow(key_id_of(public), public, private, iso(now), "active", None)
        for k in meta.keys():  # noqa: SIM118 - the repository's keys, not a dict
            if k.status == "active":
                old = Ed25519PrivateKey.from_private_bytes(b64url_decode(k.private_key))
                sig = b64url_encode(old.sign(endorsement_payload(node_id, row.key_id, public)))
                meta.set(f"endorsement:{k.key_id}", json.dumps({"endorses": row.key_id, "sig": sig}))
                meta.set_key_status(k.key_id, "retiring", iso(now + grace))
            elif k.status == "retiring" and k.retire_after and parse_rfc3339(k.retire_after) <= now:
                meta.set_key_status(k.key_id, "retired", k.retire_after)
        meta.add_key(row)
        meta.set("current_key_id", row.key_id)
        url = meta.get("node_url") or ""
        keys = meta.keys()
        past = _past_keys(meta, keys)
    return _identity(node_id, url, keys, now, past)


def load_existing(meta: MetaRepo, clock: Clock) -> NodeIdentity | None:
    """The stored identity, creating nothing (for read-only commands); None if there is none.

    Raises ``ValueError`` if the stored active key cannot be read."""
    node_id = meta.get("node_id")
    keys = meta.keys()
    if not isinstance(node_id, str) or not any(k.status == "active" for k in keys):
        return None
    url = meta.get("node_url")
    return _identity(node_id, url if isinstance(url, str) else "", keys, clock.now())
