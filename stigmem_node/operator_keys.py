"""Operator API keys as an operator manages them: create, list and revoke.

Each change and its audit row commit in one transaction, whoever asks for it: the
``apikey`` commands, and the node's first start (``first_admin_key``).  Checking a key on
a request is ``apikeys.ApiKeys.authenticate``; this module only manages keys.

Over HTTP (``/v1/admin/apikeys``) the caller is itself a key, so two rules apply there
(``holder`` and ``keep_permission``): a key cannot create a key with a permission it does
not hold (``permission_escalation``), and the last active key holding ``admin:keys`` cannot
be revoked (``last_admin_key``), so that the API never locks its operators out.  Each
refusal is audited (``apikey_refused``).  The CLI, run on the host, is bound by neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from stigmem_node import audit as ev
from stigmem_node.apikeys import ApiKeys, parse_permissions
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock, iso, parse_rfc3339
from stigmem_node.errors import Conflict, Forbidden
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
               expires_in_days: int | None = None, remote_addr: str = LOCAL,
               holder: frozenset[str] | None = None) -> tuple[str, ApiKeyRecord]:
        """A new key (returned once, in clear) and its record; ``permissions`` as
        ``parse_permissions`` reads them (``ValidationError`` ``invalid_permissions``).
        ``holder``: the permissions of the key asking (HTTP); a permission outside them is
        refused (``Forbidden`` ``permission_escalation``, audited, nothing created)."""
        perms = parse_permissions(permissions if isinstance(permissions, str) else list(permissions))
        if holder is not None:
            missing = [p for p in perms if p not in holder]
            if missing:
                self._refused("permission_escalation", actor, remote_addr,
                              {"action": "create", "permissions": list(perms), "missing": missing})
                raise Forbidden("permission_escalation",
                                f"a key cannot create a key with a permission it does not hold ({', '.join(missing)})",
                                missing=missing)
        expires = iso(self.clock.now() + timedelta(days=expires_in_days)) if expires_in_days else None
        with self.transaction():  # the key and its audit row, together
            key, rec = self.keys.create(perms, label=label, expires_at=expires)
            self.audit.record(ev.APIKEY_CREATED, actor=actor, remote_addr=remote_addr,
                              detail={"id": rec.id, "permissions": list(perms), "label": label})
        return key, rec

    def _refused(self, code: str, actor: str, remote_addr: str, detail: dict[str, Any]) -> None:
        with self.transaction():
            self.audit.record(ev.APIKEY_REFUSED, actor=actor, remote_addr=remote_addr, reason=code, detail=detail)

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

    def revoke(self, key_ref: str, *, actor: str, remote_addr: str = LOCAL,
               keep_permission: str | None = None) -> tuple[ApiKeyRecord, bool]:
        """Revoke a key by id (or by the whole key): its record and whether it changed.
        A key already revoked changes nothing and adds no audit row.  ``keep_permission``
        (HTTP: ``admin:keys``): refuse to revoke the last active key holding it
        (``Conflict`` ``last_admin_key``, audited, nothing revoked)."""
        refusal: Conflict | None = None
        with self.transaction():  # the check, the revocation and the audit row, together
            target = self.keys.repo.get(key_ref) if keep_permission is not None else None
            if target is not None and keep_permission is not None and self._last_holder(target, keep_permission):
                refusal = Conflict("last_admin_key", f"this is the last active key holding {keep_permission}; "
                                   "create another one first (or revoke it with the CLI on the host)",
                                   id=target.id)
                self.audit.record(ev.APIKEY_REFUSED, actor=actor, remote_addr=remote_addr, reason=refusal.code,
                                  detail={"action": "revoke", "id": target.id})
            else:
                rec, changed = self.keys.revoke(key_ref)
                if changed:
                    self.audit.record(ev.APIKEY_REVOKED, actor=actor, remote_addr=remote_addr, detail={"id": rec.id})
        if refusal is not None:  # raised once the refusal's audit row is committed
            raise refusal
        return rec, changed

    def _last_holder(self, target: ApiKeyRecord, permission: str) -> bool:
        """Whether ``target`` is active, holds ``permission``, and no other active key does."""
        if not (self._active(target) and permission in target.permissions):
            return False
        return not any(r.id != target.id and self._active(r) and permission in r.permissions
                       for r in self.keys.list_keys())

    def _active(self, rec: ApiKeyRecord) -> bool:
        return rec.revoked_at is None and (rec.expires_at is None or parse_rfc3339(rec.expires_at) > self.clock.now())
