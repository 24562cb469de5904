"""The node's domain vocabularies, defined once.

Every other place that needs one of these lists (validation, the CLI's choices, the
HTTP query parameters, the SQL CHECK constraints in schema.sql) takes it from here or is
tested against it.  Pure: imports nothing.
"""

from __future__ import annotations

from typing import Final

#: Fact scopes, narrowest first.  ``local`` never leaves the node.
SCOPES: Final = ("local", "team", "company", "public")
#: Scopes a node may declare and serve to peers.
FEDERATED_SCOPES: Final = ("team", "company", "public")
DEFAULT_SHARED_SCOPES: Final = ("company", "public")

#: A registered peer's status.
PEER_STATUSES: Final = ("pending_approval", "active", "suspended", "revoked", "rejected")

#: The status of one of this node's signing keys.
KEY_STATUSES: Final = ("active", "retiring", "retired")

#: A fact value's type, and how an agent should read it.
VALUE_TYPES: Final = ("string", "text", "number", "boolean", "datetime", "ref", "null")
INTERPRET_AS: Final = ("content", "instruction")

#: What an operator API key may do.
PERMISSIONS: Final = ("federate", "admin:federation", "audit:read", "facts:write", "facts:read", "facts:erase",
                      "admin:keys", "metrics:read")

#: Why a fact or an entity was erased (a tombstone's ``reason``).
ERASURE_REASONS: Final = ("right_to_erasure", "legal", "incorrect", "operator")
DEFAULT_ERASURE_REASON: Final = "operator"

#: What a tombstone erases: one fact, or every fact of an entity.
TOMBSTONE_KINDS: Final = ("fact", "entity")
