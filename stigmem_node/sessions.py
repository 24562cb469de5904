"""Status page sessions: an operator signs in once with an API key, then holds a cookie.

- The session id is 32 random bytes (256 bits, base64url) handed to the browser once; the
  database keeps only its SHA-256 (``store.sessions``), so a copy of the database opens no
  session.  Replicas share the table.
- A session remembers the key id and the permissions the key held at sign-in.  At every
  request the key is read again: a key revoked or expired since ends the session at once.
- A session ends after ``IDLE_S`` without a request, and ``MAX_AGE_S`` after sign-in
  whatever its use (expired rows are deleted when met, and by ``prune``).
- The CSRF token of a session is HMAC-SHA256(session id, a constant): a per-session secret
  the server never stores, compared in constant time (``csrf_ok``).

Callers run ``open``, ``resolve`` and ``close`` in the write lane (they delete expired
rows and record the last request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from stigmem_node.apikeys import Principal
from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.store.apikeys import ApiKeyRepo
from stigmem_node.store.sessions import SessionRecord, SessionRepo

IDLE_S = 2 * 3600  # a session unused this long ends
MAX_AGE_S = 12 * 3600  # a session ends this long after sign-in, however used
TOUCH_EVERY_S = 60  # the last request is recorded at most this often
CSRF_LABEL = b"stigmem-node status csrf v1"


@dataclass(frozen=True)
class Session:
    key_id: str
    permissions: frozenset[str]
    csrf_token: str

    @property
    def principal(self) -> Principal:
        return Principal(self.key_id, self.permissions)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode("utf-8", "replace"), CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether ``given`` is the session's CSRF token (constant-time)."""
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                          session.csrf_token.encode("ascii"))


class Sessions:
    def __init__(self, repo: SessionRepo, keys: ApiKeyRepo, clock: Clock, *, idle_s: int = IDLE_S,
                 max_age_s: int = MAX_AGE_S) -> None:
        self.repo = repo
        self.keys = keys
        self.clock = clock
        self.idle_ms = idle_s * 1000
        self.max_age_ms = max_age_s * 1000

    def open(self, principal: Principal) -> str:
        """A new session for ``principal`` (already authenticated); returns its id.  Sessions
        expired meanwhile are deleted first, so the table stays small."""
        self.prune()
        session_id = secrets.token_urlsafe(32)
        now = self.clock.now_ms()
        self.repo.insert(SessionRecord(_hash(session_id), principal.key_id, tuple(sorted(principal.permissions)),
                                       now, now))
        return session_id

    def resolve(self, session_id: str | None) -> Session | None:
        """The live session ``session_id`` names, else None (an expired session, or one whose
        key was revoked or expired, is deleted)."""
        if not session_id or len(session_id) > 100:
            return None
        id_hash = _hash(session_id)
        rec = self.repo.get(id_hash)
        if rec is None:
            return None
        now = self.clock.now_ms()
        if now - rec.created_ms >= self.max_age_ms or now - rec.seen_ms >= self.idle_ms or not self._key_live(rec):
            self.repo.delete(id_hash)
            return None
        if now - rec.seen_ms >= TOUCH_EVERY_S * 1000:
            self.repo.touch(id_hash, now)
        return Session(rec.key_id, frozenset(rec.permissions), csrf_token(session_id))

    def _key_live(self, rec: SessionRecord) -> bool:
        key = self.keys.get(rec.key_id)
        if key is None or key.revoked_at is not None:
            return False
        if key.expires_at is None:
            return True
        try:
            return parse_rfc3339(key.expires_at) > self.clock.now()
        except ValueError:
            return False

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 100:
            self.repo.delete(_hash(session_id))

    def prune(self) -> int:
        """Delete every expired session; the number deleted."""
        now = self.clock.now_ms()
        return self.repo.prune(created_before_ms=now - self.max_age_ms, seen_before_ms=now - self.idle_ms)
