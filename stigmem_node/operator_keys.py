"""Operator API keys as an operator manages them: create, list and revoke.

Each change and its audit row commit in one transaction, whoever asks for it: the
``apikey`` commands, and the node's first start (``first_admin_key``).  Checking a key on
a request is ``apikeys.ApiKeys.authenticate``; this module only manages keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from stigmem_node import audit as ev
from stigmem_node.apikeys import ApiKeys, parse_permissions
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock, iso
from stigmem_node.store.apikeys import ApiKeyRecord
from stigmem_node.vocabulary import PERMISSIONS

FIRST_KEY_LABEL = "first admin key"
FIRST_KEY_ACTOR = "node:first-start"
LOCAL = "local"  # the remote address recorded for changes made on this machine


class OperatorKeys:
    def __init__(self, keys: ApiKeys, audit: AuditTrail, transaction: Callable[[], AbstractContextManager[Any]],
                 clock: Clock) -> None:
        """``transaction``: opens one storage transaction (``Store.transaction``), which the
        audit trail's own writes join."""
        self.keys = keys
        self.audit = audit
        self.transaction = transaction
        self.clock = clock

    def create(self, permissions: str | Sequence[str], *, actor: str, label: str | None = None,
               expires_in_days: int | None = None) -> tuple[str, ApiKeyRecord]:
        """A new key (returned once, in clear) and its record; ``permissions`` as
        ``parse_permissions`` reads them (``ValidationError`` ``invalid_permissions``)."""
        perms = parse_permissions(permissions if isinstance(permissions, str) else list(permissions))
        expires = iso(self.clock.now() + timedelta(days=expires_in_days)) if expires_in_days else None
        with self.transaction():  # the key and its audit row, together
            key, rec = self.keys.create(perms, label=label, expires_at=expires)
            self.audit.record(ev.APIKEY_CREATED, actor=actor, remote_addr=LOCAL,
                              detail={"id": rec.id, "permissions": list(perms), "label": label})
        return key, rec

    def first_admin_key(self) -> str | None:
        """On a node without any API key, create one with every permission and return it
        (once; it is never stored in clear).  None if the node already has keys."""
        with self.transaction():
            if self.keys.count():
                return None
            key, rec = self.keys.create(PERMISSIONS, label=FIRST_KEY_LABEL)
            self.audit.record(ev.APIKEY_CREATED, actor=FIRST_KEY_ACTOR, remote_addr=LOCAL,
                              detail={"id": rec.id, "permissions": list(PERMISSIONS), "label": rec.label})
        return key

    def records(self) -> list[ApiKeyRecord]:
        """Every key's record (never a secret), oldest first."""
        return self.keys.list_keys()

    def revoke(self, key_ref: str, *, actor: str) -> tuple[ApiKeyRecord, bool]:
        """Revoke a key by id (or by the whole key): its record and whether it changed.
        A key already revoked changes nothing and adds no audit row."""
        with self.transaction():  # the revocation and its audit row, together
            rec, changed = self.keys.revoke(key_ref)
            if changed:
                self.audit.record(ev.APIKEY_REVOKED, actor=actor, remote_addr=LOCAL, detail={"id": rec.id})
        return rec, changed
