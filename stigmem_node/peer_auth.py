"""Authenticate a peer's request: bearer token -> peer row -> keys -> claims -> nonce.

Every rejection is audited (reason code, claimed issuer, client address, clock skew) within
the node's budgets for unauthenticated audit rows (``UnauthenticatedAuditGate``), and
failures per address are rate-limited.  The nonce is consumed by one atomic INSERT only
after every other check has passed (invariant 3) and kept until
``tokens.nonce_kept_until(exp)``, beyond every leeway any process may use (invariant 4).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stigmem_node import tokens
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.errors import StigmemError
from stigmem_node.keys import public_key_from_b64
from stigmem_node.ratelimit import FailureLimiter, UnauthenticatedAuditGate
from stigmem_node.store import Store
from stigmem_node.tokens import PeerAuth, TokenRejected, VerifiedToken

TOKEN_REJECTED = "token_rejected"  # noqa: S105 - an audit event name
REPLAY_ATTEMPT = "replay_attempt"
PEER_AUTH_THROTTLED = "peer_auth_throttled"


@dataclass(frozen=True)
class AuthenticatedPeer:
    token: VerifiedToken
    allowed_scopes: tuple[str, ...]
    # Resolves when the consumed nonce is committed (group commit); await it before answering.
    committed: Any = None

    @property
    def peer_id(self) -> str:
        return self.token.peer.peer_id

    @property
    def node_id(self) -> str:
        return self.token.peer.node_id


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class PeerAuthenticator:
    def __init__(self, store: Store, node_id: str, audit: AuditTrail, clock: Clock, *, leeway_ms: int,
                 max_lifetime_ms: int = tokens.MAX_LIFETIME_MS, failures: FailureLimiter | None = None,
                 audit_gate: UnauthenticatedAuditGate | None = None) -> None:
        self.store = store
        self.node_id = node_id
        self.audit = audit
        self.clock = clock
        if not 0 <= leeway_ms <= tokens.MAX_LEEWAY_MS:
            raise ValueError(f"leeway must be between 0 and {tokens.MAX_LEEWAY_MS} ms")
        self.leeway_ms = leeway_ms
        self.max_lifetime_ms = max_lifetime_ms
        self.failures = failures or FailureLimiter(max_failures=30, window_s=60)
        self.audit_gate = audit_gate or UnauthenticatedAuditGate()
        # A serving node's group commit (``use_group_commit``): nonce inserts then share commits.
        self.group: Any = None
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._scope_cache: dict[str, tuple[str, ...]] = {}  # few distinct values: scope sets
        self._cache: dict[str, tuple[PeerAuth, tuple[str, ...], int]] = {}
        self._cache_stamp: tuple[int, int] = (-1, -1)

    def use_group_commit(self, group: Any) -> None:
        """Let nonce inserts share commits (a serving node, on its event loop), or stop (None)."""
        self.group = group

    def pending_commit(self) -> asyncio.Future[None] | None:
        """The open group commit, if any: await it before answering a rejection, so that the
        rejection's audit row is durable first."""
        group = self.group
        return group.pending if group is not None else None

    def _peer(self, node_id: str, now_ms: int) -> tuple[PeerAuth, tuple[str, ...]] | None:
        """The peer's status, keys and granted scopes, cached until anything changes.

        The cache holds only while the database is unchanged: by this process (the peer
        repository's write counter) and by any other (SQLite's data_version), and until the
        next retirement time of a key passes.  So a suspension made with the CLI takes
        effect on the very next request.
        """
        stamp = (self.store.peers.writes, -1)
        if stamp != self._cache_stamp:
            self._cache.clear()
            self._cache_stamp = stamp
        hit = self._cache.get(node_id)
        if hit is not None and now_ms < hit[2]:
            return hit[0], hit[1]
        rows = self.store.peers.auth_rows(node_id)
        if not rows:
            return None
        peer_id, status, scopes_json = rows[0][0], rows[0][1], rows[0][2]
        keys, valid_until = [], 2**62
        for _, _, _, key_id, public_key, retire_after in rows:
            if key_id is None:
                continue
            if retire_after:
                retire_ms = int(parse_rfc3339(retire_after).timestamp() * 1000)
                if retire_ms < now_ms:
                    continue
                valid_until = min(valid_until, retire_ms)
            key = self._key(public_key)
            if key is not None:
                keys.append((key_id, key))
        auth, scopes = PeerAuth(peer_id, node_id, status, tuple(keys)), self._scopes(scopes_json)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[node_id] = (auth, scopes, valid_until)
        return auth, scopes

    def _scopes(self, scopes_json: str) -> tuple[str, ...]:
        scopes = self._scope_cache.get(scopes_json)
        if scopes is None:
            scopes = self._scope_cache[scopes_json] = tuple(json.loads(scopes_json))
        return scopes

    def _key(self, public_key: str) -> Ed25519PublicKey | None:
        key = self._keys.get(public_key)
        if key is None:
            try:
                key = public_key_from_b64(public_key)
            except ValueError:
                return None
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[public_key] = key
        return key

    def authenticate(self, authorization: str | None, *, method: str | None, path_qs: str | None,
                     remote_addr: str) -> AuthenticatedPeer:
        retry = self.failures.retry_after(remote_addr)
        if retry is not None:
            raise StigmemError("too_many_failed_attempts", "too many failed peer authentications; retry later",
                               retry_after=retry)
        now_ms = self.clock.now_ms()
        found: list[tuple[str, tuple[str, ...]]] = []

        def lookup(iss: str) -> PeerAuth | None:
            entry = self._peer(iss, now_ms)
            if entry is None:
                return None
            found.append((entry[0].peer_id, entry[1]))
            return entry[0]

        try:
            token = bearer_token(authorization)
            if token is None:
                raise TokenRejected("peer_token_required", "a peer token (Authorization: Bearer) is required")
            verified = tokens.verify(
                token, lookup=lookup, our_node_id=self.node_id, now_ms=now_ms, leeway_ms=self.leeway_ms,
                max_lifetime_ms=self.max_lifetime_ms, method=method, path_qs=path_qs,
            )
            committed = self.group.join() if self.group is not None else None
            kept_until = tokens.nonce_kept_until(verified.exp_ms)
            if not self.store.nonces.consume(verified.nonce, verified.peer.peer_id, kept_until):
                raise TokenRejected("nonce_already_seen", "this token was already used", issuer=verified.peer.node_id,
                                    skew_ms=now_ms - int(verified.claims["iat"]))
        except TokenRejected as exc:
            self.failures.fail(remote_addr)
            self._audit(exc, found[0][0] if found else None, remote_addr, path_qs)
            if self.failures.retry_after(remote_addr) is not None:
                # This failure crossed the limit: from now on the address gets 429 for a while.
                extra = self.audit_gate.admit("throttle", remote_addr)
                if extra is not None:
                    self.audit.record(PEER_AUTH_THROTTLED, actor=None, remote_addr=remote_addr,
                                      reason="too_many_failed_attempts", detail={"last_code": exc.code, **extra})
            raise
        return AuthenticatedPeer(verified, found[0][1], committed)

    def _audit(self, exc: TokenRejected, peer_id: str | None, remote_addr: str, path_qs: str | None) -> None:
        extra = self.audit_gate.admit("token", remote_addr)
        if extra is None:
            return
        detail: dict[str, Any] = {"issuer": exc.issuer, "skew_ms": exc.skew_ms, "path": (path_qs or "")[:200], **extra}
        replay = exc.code == "nonce_already_seen"
        self.audit.record(REPLAY_ATTEMPT if replay else TOKEN_REJECTED, peer_id=peer_id, actor=None,
                          reason=exc.code, detail=detail, remote_addr=remote_addr)
