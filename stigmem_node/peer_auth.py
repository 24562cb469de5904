"""Authenticate a peer's request: bearer token -> peer row -> keys -> claims -> nonce.

Every rejection is audited (reason code, claimed issuer, client address, clock skew) within
the node's budgets for unauthenticated audit rows (``UnauthenticatedAuditGate``), and
failures per address are rate-limited.  The nonce is consumed by one atomic INSERT only
after every other check has passed (invariant 3) and kept until
``tokens.nonce_kept_until(exp)``, beyond every leeway any process may use (invariant 4).

Nothing here blocks the event loop: the token is verified and the peer looked up in the
read lane; the nonces of concurrent requests are committed together in the write lane
(``NonceBatcher``, a group commit); rejection audit rows are written in the write lane.
The limiter and the audit budgets are in memory and stay on the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stigmem_node import notification, tokens
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.errors import StigmemError
from stigmem_node.keys import public_key_from_b64
from stigmem_node.notification import NotificationRejected, VerifiedNotification
from stigmem_node.offload import Offload
from stigmem_node.ratelimit import FailureLimiter, UnauthenticatedAuditGate
from stigmem_node.store.db import StorageUnavailable
from stigmem_node.store.peers import PeerRepo
from stigmem_node.tokens import PeerAuth, TokenRejected, VerifiedToken

log = logging.getLogger("stigmem_node.peer_auth")

R = TypeVar("R")

TOKEN_REJECTED = "token_rejected"  # noqa: S105 - an audit event name
NOTIFICATION_REJECTED = "notification_rejected"
NOTIFY_PATH = "/v1/federation/notify"
REPLAY_ATTEMPT = "replay_attempt"
PEER_AUTH_THROTTLED = "peer_auth_throttled"


@dataclass(frozen=True)
class AuthenticatedPeer:
    token: VerifiedToken
    allowed_scopes: tuple[str, ...]

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


@dataclass(frozen=True)
class _Raised:
    """What ``then`` raised, held until the nonce is committed."""

    error: StigmemError


class NonceStore(Protocol):
    """Consumes nonces, many in one transaction (``store.nonces``)."""

    def consume_batch(self, items: list[tuple[str, str, int]]) -> list[bool]: ...


class AuthObserver(Protocol):
    """Told of each outcome of peer authentication (the node's metrics)."""

    def rejected(self, code: str) -> None:
        """A request was refused with ``code`` (a ``TokenRejected`` code, or the throttle's)."""
        ...

    def nonce_accepted(self) -> None:
        """A fresh nonce was committed: a request authenticated."""
        ...


class AuthStore(Protocol):
    """The storage peer authentication uses (``stigmem_node.store.Store`` is one)."""

    @property
    def peers(self) -> PeerRepo: ...

    @property
    def nonces(self) -> NonceStore: ...


class NonceBatcher:
    """Group commit of nonces: the nonces of concurrent requests share one transaction.

    A nonce is handed in from any thread (``submit``: the read-lane worker that verified its
    token does it at once, so the commit runs while that worker reads the page) with an
    asyncio future of the request's event loop, which says, once the batch that holds the
    nonce is committed, whether it was fresh or a replay.  One batch at a time is committed,
    by a write-lane thread that takes batch after batch while nonces keep coming
    (``consume_batch``: one transaction each); the nonces that arrive meanwhile form the next
    batch.  The verdicts of a batch reach each loop in one hand-over (one wake-up of the loop
    per batch, not per request).  No answer leaves before its nonce is durable, and replays
    stay exact: the primary key admits each nonce once, within a batch, across batches and
    across processes.
    """

    MAX_BATCH = 1000

    def __init__(self, nonces: NonceStore, lanes: Offload) -> None:
        self.nonces = nonces
        self.lanes = lanes
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, str, int], asyncio.Future[bool]]] = []
        self._draining = False
        self._idle = threading.Event()
        self._idle.set()
        self.commits = 0  # transactions committed (how well requests share them)
        self.consumed = 0  # nonces in them

    def submit(self, nonce: str, peer_id: str, expires_at_ms: int, done: asyncio.Future[bool]) -> None:
        """Hand in ``nonce`` (any thread); ``done`` (a future of its loop) gets True if the nonce
        was fresh (now recorded), False if already seen, or the storage error (``StorageBusy``)
        of the batch that held it.  A request cancelled meanwhile still spends its nonce."""
        with self._lock:
            self._pending.append(((nonce, peer_id, expires_at_ms), done))
            if self._draining:
                return
            self._draining = True
            self._idle.clear()
        try:
            self.lanes.submit_write(self._drain)
        except RuntimeError:  # the lanes are closed: the node is stopping
            self._fail_pending(StorageUnavailable("the node is stopping"))

    async def consume(self, nonce: str, peer_id: str, expires_at_ms: int) -> bool:
        """``submit`` from the event loop, awaited."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.submit(nonce, peer_id, expires_at_ms, done)
        return await done

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._draining = False
                    self._idle.set()
                    return
                batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
            try:
                verdicts: list[bool | Exception] = list(self.nonces.consume_batch([item for item, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - each request answers with it (e.g. database_busy)
                verdicts = [exc] * len(batch)
            else:
                self.commits += 1
                self.consumed += len(batch)
            _deliver_all([(future, verdict) for (_, future), verdict in zip(batch, verdicts, strict=True)])

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._draining = False
            self._idle.set()
        _deliver_all([(future, exc) for _, future in batch])

    async def wait_idle(self) -> None:
        """Wait until every nonce handed in so far is committed."""
        if not self._idle.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self._idle.wait)


def _deliver_all(verdicts: list[tuple[asyncio.Future[bool], bool | Exception]]) -> None:
    """Hand each loop the verdicts of its futures, in one call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool | Exception]]] = {}
    for future, verdict in verdicts:
        by_loop.setdefault(future.get_loop(), []).append((future, verdict))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # that loop is closed: nobody waits for these any more
            log.debug("nonce verdicts for a closed event loop dropped")


def _deliver(items: list[tuple[asyncio.Future[bool], bool | Exception]]) -> None:
    """On the loop: set each future still waiting (a cancelled request's nonce is spent all
    the same)."""
    for future, verdict in items:
        if future.done():
            continue
        if isinstance(verdict, Exception):
            future.set_exception(verdict)
        else:
            future.set_result(verdict)


class PeerAuthenticator:
    def __init__(self, store: AuthStore, node_id: str, audit: AuditTrail, clock: Clock, lanes: Offload, *,
                 leeway_ms: int, max_lifetime_ms: int = tokens.MAX_LIFETIME_MS, failures: FailureLimiter | None = None,
                 audit_gate: UnauthenticatedAuditGate | None = None, observer: AuthObserver | None = None) -> None:
        """``observer``: told of each rejection and each nonce accepted (None: nobody)."""
        self.store = store
        self.observer = observer
        self.node_id = node_id
        self.audit = audit
        self.clock = clock
        self.lanes = lanes
        if not 0 <= leeway_ms <= tokens.MAX_LEEWAY_MS:
            raise ValueError(f"leeway must be between 0 and {tokens.MAX_LEEWAY_MS} ms")
        self.leeway_ms = leeway_ms
        self.max_lifetime_ms = max_lifetime_ms
        self.failures = failures or FailureLimiter(max_failures=30, window_s=60)
        self.audit_gate = audit_gate or UnauthenticatedAuditGate()
        self.nonces = NonceBatcher(store.nonces, lanes)
        # Parsed keys and scope sets, by their text: few distinct values, never stale.
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._scope_cache: dict[str, tuple[str, ...]] = {}
        # What _peer derived from a peer's rows, by their values: (valid from, valid until,
        # PeerAuth, scopes); bounded, never stale (the rows themselves are read every time).
        self._derived: dict[tuple[Any, ...], tuple[int, int, PeerAuth, tuple[str, ...]]] = {}

    def _peer(self, node_id: str, now_ms: int) -> tuple[PeerAuth, tuple[str, ...]] | None:
        """The peer's status, keys and granted scopes, read afresh for every request: a
        suspension or a key change made by any process applies to the very next one.

        Only what is derived from the rows (parsed keys and scopes, retirement times, the
        ``PeerAuth``) is kept, by the rows' exact values, for as long as no key's retirement
        falls between then and now."""
        rows = self.store.peers.auth_rows(node_id)
        if not rows:
            return None
        key = (node_id, *rows)
        cached = self._derived.get(key)
        if cached is not None and cached[0] <= now_ms <= cached[1]:
            return cached[2], cached[3]
        peer_id, status, scopes_json = rows[0][0], rows[0][1], rows[0][2]
        keys = []
        valid_from, valid_until = -1, tokens.MAX_TIME_MS * 2  # while the same keys are retired
        for _, _, _, key_id, public_key, retire_after in rows:
            if key_id is None:
                continue
            if retire_after:
                retire_ms = int(parse_rfc3339(retire_after).timestamp() * 1000)
                if retire_ms < now_ms:
                    valid_from = max(valid_from, retire_ms + 1)
                    continue
                valid_until = min(valid_until, retire_ms)
            parsed = self._key(public_key)
            if parsed is not None:
                keys.append((key_id, parsed))
        entry = (PeerAuth(peer_id, node_id, status, tuple(keys)), self._scopes(scopes_json))
        if len(self._derived) > 1000:
            self._derived.clear()
        self._derived[key] = (valid_from, valid_until, *entry)
        return entry

    def _scopes(self, scopes_json: str) -> tuple[str, ...]:
        scopes = self._scope_cache.get(scopes_json)
        if scopes is None:
            if len(self._scope_cache) > 1000:
                self._scope_cache.clear()
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

    def _verify(self, token: str, now_ms: int, method: str | None, path_qs: str | None,
                found: list[tuple[str, tuple[str, ...]]]) -> VerifiedToken:
        """Verify the token (a read and the signature check: in the read lane); the peer
        found, if any, is appended to ``found`` (for the audit row of a rejection)."""
        return tokens.verify(
            token, lookup=self._lookup(now_ms, found), our_node_id=self.node_id, now_ms=now_ms,
            leeway_ms=self.leeway_ms, max_lifetime_ms=self.max_lifetime_ms, method=method, path_qs=path_qs,
        )

    async def authenticate(self, authorization: str | None, *, method: str | None, path_qs: str | None,
                           remote_addr: str) -> AuthenticatedPeer:
        """The authenticated peer, once its nonce is committed; a ``TokenRejected`` once its
        audit row (if any) is committed."""
        peer, _ = await self.authenticate_then(authorization, method=method, path_qs=path_qs,
                                               remote_addr=remote_addr, then=None)
        return peer

    async def authenticate_then(self, authorization: str | None, *, method: str | None, path_qs: str | None,
                                remote_addr: str, then: Callable[[AuthenticatedPeer], R] | None,
                                ) -> tuple[AuthenticatedPeer, R | None]:
        """``authenticate``, and ``then(peer)`` run in the same worker call as the token
        check, right after it (one hand-over to a thread per request instead of two: the
        pull reads its page so).  Its result, or the ``StigmemError`` it raised, comes out only
        once the nonce is committed and fresh, as if it had run after; for a replay it is
        thrown away unseen."""
        self._check_throttle(remote_addr)
        now_ms = self.clock.now_ms()
        found: list[tuple[str, tuple[str, ...]]] = []
        try:
            token = bearer_token(authorization)
            if token is None:
                raise TokenRejected("peer_token_required", "a peer token (Authorization: Bearer) is required")
            spent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            verified, result = await self.lanes.read(self._verify_then, token, now_ms, method, path_qs, found,
                                                     then, spent)
            fresh = await spent
            if not fresh:
                raise TokenRejected("nonce_already_seen", "this token was already used", issuer=verified.peer.node_id,
                                    skew_ms=now_ms - int(verified.claims["iat"]))
        except TokenRejected as exc:
            await self._refused(exc, found, remote_addr, path_qs)
            raise
        if self.observer is not None:
            self.observer.nonce_accepted()
        if isinstance(result, _Raised):
            raise result.error
        return AuthenticatedPeer(verified, found[0][1]), result

    def _verify_then(self, token: str, now_ms: int, method: str | None, path_qs: str | None,
                     found: list[tuple[str, tuple[str, ...]]], then: Callable[[AuthenticatedPeer], R] | None,
                     spent: asyncio.Future[bool]) -> tuple[VerifiedToken, R | None]:
        """The token verified, its nonce handed to the committer (whose commit runs while
        ``then`` reads; ``spent`` gets its verdict), and ``then``'s result."""
        verified = self._verify(token, now_ms, method, path_qs, found)
        self.nonces.submit(verified.nonce, verified.peer.peer_id, tokens.nonce_kept_until(verified.exp_ms), spent)
        if then is None:
            return verified, None
        try:
            return verified, then(AuthenticatedPeer(verified, found[0][1]))
        except StigmemError as exc:  # raised once the nonce is consumed (as before the read)
            return verified, _Raised(exc)  # type: ignore[return-value]

    async def authenticate_notification(self, body: bytes, signature: str | None, key_id: str | None, *,
                                        remote_addr: str) -> VerifiedNotification:
        """A notification (``notification.verify``) from an active peer, once its nonce is
        committed; a ``NotificationRejected`` once its audit row (if any) is committed.  The
        same failure limit and audit budgets as tokens."""
        self._check_throttle(remote_addr)
        now_ms = self.clock.now_ms()
        found: list[tuple[str, tuple[str, ...]]] = []
        try:
            verified = await self.lanes.read(self._verify_notification, body, signature, key_id, now_ms, found)
            fresh = await self.nonces.consume(verified.nonce, verified.peer.peer_id,
                                              tokens.nonce_kept_until(verified.nonce_expires_ms))
            if not fresh:
                raise NotificationRejected("nonce_already_seen", "this notification was already received",
                                           issuer=verified.peer.node_id, skew_ms=now_ms - verified.iat_ms)
        except NotificationRejected as exc:
            await self._refused(exc, found, remote_addr, NOTIFY_PATH)
            raise
        if self.observer is not None:
            self.observer.nonce_accepted()
        return verified

    async def notification_refused(self, exc: NotificationRejected, *, remote_addr: str) -> None:
        """Count and audit a notification refused before it reached ``authenticate_notification``
        (its body ran past the cap)."""
        await self._refused(exc, [], remote_addr, NOTIFY_PATH)

    def _verify_notification(self, body: bytes, signature: str | None, key_id: str | None, now_ms: int,
                             found: list[tuple[str, tuple[str, ...]]]) -> VerifiedNotification:
        return notification.verify(body, signature, key_id, lookup=self._lookup(now_ms, found),
                                   our_node_id=self.node_id, now_ms=now_ms)

    def _check_throttle(self, remote_addr: str) -> None:
        """``too_many_failed_attempts`` while the address is over its failure limit."""
        retry = self.failures.retry_after(remote_addr)
        if retry is not None:
            if self.observer is not None:
                self.observer.rejected("too_many_failed_attempts")
            raise StigmemError("too_many_failed_attempts", "too many failed peer authentications; retry later",
                               retry_after=retry)

    def _lookup(self, now_ms: int, found: list[tuple[str, tuple[str, ...]]]) -> tokens.PeerLookup:
        """The peer lookup of one verification: each peer found is appended to ``found`` (with
        its granted scopes), for the request and for the audit row of a refusal."""
        def lookup(iss: str) -> PeerAuth | None:
            entry = self._peer(iss, now_ms)
            if entry is None:
                return None
            found.append((entry[0].peer_id, entry[1]))
            return entry[0]

        return lookup

    async def _refused(self, exc: TokenRejected, found: list[tuple[str, tuple[str, ...]]], remote_addr: str,
                       path_qs: str | None) -> None:
        if self.observer is not None:
            self.observer.rejected(exc.code)
        await self._rejected(exc, found[0][0] if found else None, remote_addr, path_qs)

    async def _rejected(self, exc: TokenRejected, peer_id: str | None, remote_addr: str, path_qs: str | None) -> None:
        """Count the failure and write its audit rows (within the budgets), durably."""
        self.failures.fail(remote_addr)
        rows: list[dict[str, Any]] = []
        extra = self.audit_gate.admit("token", remote_addr)
        if extra is not None:
            detail: dict[str, Any] = {"issuer": exc.issuer, "skew_ms": exc.skew_ms, "path": (path_qs or "")[:200],
                                      **extra}
            rejected = NOTIFICATION_REJECTED if isinstance(exc, NotificationRejected) else TOKEN_REJECTED
            rows.append({"event_type": REPLAY_ATTEMPT if exc.code == "nonce_already_seen" else rejected,
                         "peer_id": peer_id, "actor": None, "reason": exc.code, "detail": detail,
                         "remote_addr": remote_addr})
        if self.failures.retry_after(remote_addr) is not None:
            # This failure crossed the limit: from now on the address gets 429 for a while.
            extra = self.audit_gate.admit("throttle", remote_addr)
            if extra is not None:
                rows.append({"event_type": PEER_AUTH_THROTTLED, "actor": None, "remote_addr": remote_addr,
                             "reason": "too_many_failed_attempts", "detail": {"last_code": exc.code, **extra}})
        if rows:
            await self.lanes.write(self._record, rows)

    def _record(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.audit.record(**row)
