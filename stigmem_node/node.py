"""The node: settings, storage, identity and the services built on them, wired once.

Both the HTTP app and the CLI work through a ``Node``.  Each service receives the
collaborators it uses (repositories, the clock, the audit trail, the outbound client, the
lanes that run storage work off the event loop), never the node.  A serving node's
background work (database upkeep, the key watch, audit sealing, API-key touches, the pull
schedule) is started and stopped here (``start_background``, ``stop_background``), from the
app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stigmem_node import audit as ev
from stigmem_node import declaration, doctor, identity, manifest, tokens
from stigmem_node.activity import Activity
from stigmem_node.apikeys import ApiKeys, DeferredTouches, Peppers, check_peppers
from stigmem_node.audit import AuditTrail
from stigmem_node.audit_anchor import verify_database
from stigmem_node.audit_query import AuditQuery
from stigmem_node.background import (
    Maintenance,
    flush_activity,
    flush_touches,
    seal_audit,
    watch_identity,
    write_activity,
    write_touches,
)
from stigmem_node.clock import Clock
from stigmem_node.config import Settings
from stigmem_node.erasure import Erasure
from stigmem_node.errors import StigmemError
from stigmem_node.facts import FactInput
from stigmem_node.federation import Federation
from stigmem_node.local_facts import LocalFacts
from stigmem_node.metrics import Metrics, PublishRules, StoreSource
from stigmem_node.new_facts import NewFacts
from stigmem_node.notifier import PeerNotifier
from stigmem_node.offload import Lanes
from stigmem_node.operator_keys import OperatorKeys
from stigmem_node.outbound import Outbound
from stigmem_node.peer_auth import PeerAuthenticator
from stigmem_node.publish import Publisher
from stigmem_node.ratelimit import FailureLimiter, UnauthenticatedAuditGate
from stigmem_node.replication import Ingest, PageFetcher, PullOptions, Scheduler, Subscriber
from stigmem_node.replication.checker import InlineChecker, ProcessChecker
from stigmem_node.replication.erasures import RemoteErasure
from stigmem_node.sessions import Sessions
from stigmem_node.signing import SigningPool, usable_cores
from stigmem_node.status import StatusReader
from stigmem_node.store import Store

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("stigmem_node.node")

DECLARATION_REFRESH = timedelta(hours=1)
KEY_REFRESH_EVERY_S = 300.0
RESIGN_PENDING = "resign_pending"  # node_meta: key id whose re-signing of local facts is unfinished
PING_TIMEOUT_S = 1.0  # /healthz and /readyz: how long the database may take to answer a trivial read
# At most this many check worker processes (each checks one pulled page at a time).
MAX_CHECK_WORKERS = 4


@dataclass
class _Background:
    """What ``start_background`` started, for ``stop_background``."""

    maintenance: Maintenance
    scheduler: Scheduler | None
    notifier: PeerNotifier | None
    tasks: list[asyncio.Task[None]]
    touches: DeferredTouches


class Node:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, serving: bool = False,
                 create: bool = True, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``create``: make the database, identity and pepper where there are none (``init``
        and ``serve``).  Without it, the database must already be a stigmem node's and the
        pepper is read only when API keys are hashed (a missing one is an error).
        ``transport``: what every outbound request goes through (None: the network)."""
        self.settings = settings
        self.clock = clock or Clock()
        self.outbound = Outbound(timeout_s=settings.outbound_timeout_s,
                                 allow_insecure_http=settings.allow_insecure_http, transport=transport)
        self.store = Store(settings.database, settings.synchronous, create=create,
                           busy_timeout_ms=settings.db_busy_timeout_ms, pool_size=settings.db_pool_size)
        self.publish_rules = rules = PublishRules(frozenset(settings.shared_scopes) - {"local"},
                                                  settings.federate_instructions)
        self.metrics = Metrics(StoreSource(self.store, rules), rules, now=lambda: self.clock.now_ms() / 1000,
                               now_iso=self.clock.now_iso)
        self.lanes = Lanes(settings.read_lane_threads, settings.write_lane_threads, observer=self.metrics.lane_work)
        # Pulled pages are checked in worker processes, one a core, where there are cores to
        # spare (the cores this process may run on: its CPU affinity).
        cores = usable_cores()
        workers = settings.check_workers if settings.check_workers is not None else \
            (min(cores, MAX_CHECK_WORKERS) if cores > 1 else 0)
        self.checker: ProcessChecker | InlineChecker = ProcessChecker(workers) if workers else InlineChecker()

        def peppers() -> Peppers:
            loaded = Peppers.load(settings.pepper_path, settings.pepper, create=create,
                                  shared=settings.database_url is not None)
            check_peppers(loaded, self.store.meta)
            return loaded

        try:
            self.identity = identity.load_or_create(
                self.store.meta, self.clock, node_id=settings.node_id, node_url=settings.node_url,
                default_url=settings.public_url, record_default=serving, create=create,
            )
            self.apikeys = ApiKeys(self.store.apikeys, peppers() if create else peppers, self.clock)
        except BaseException:
            self.store.close()  # nothing held open (no -wal left) after a refusal
            raise
        self.audit = AuditTrail(self.store.audit, self.clock, signer=lambda: self.identity,
                                checkpoint_rows=settings.audit_checkpoint_rows)
        self.audit_query = AuditQuery(self.store.audit, self.store.peers)
        self.operator_keys = OperatorKeys(self.apikeys, self.audit, self.store.transaction, self.clock)
        self.federation = Federation(
            self.store, self.identity, self.audit, self.clock, self.lanes,
            fetch_well_known=self.outbound.fetch_well_known,
            leeway=timedelta(seconds=settings.clock_leeway_s),
            max_declaration_age=timedelta(seconds=settings.declaration_max_age_s),
        )
        window = settings.auth_window_s
        # One set of audit budgets for every row that unauthenticated traffic can cause.
        self.unauth_audit = UnauthenticatedAuditGate(per_address=20, global_per_window=600, window_s=window)
        self.peer_auth = PeerAuthenticator(
            self.store, self.identity.node_id, self.audit, self.clock, self.lanes,
            leeway_ms=settings.clock_leeway_s * 1000,
            failures=FailureLimiter(max_failures=30, window_s=window), audit_gate=self.unauth_audit,
            observer=self.metrics,
        )
        self.apikey_failures = FailureLimiter(max_failures=10, window_s=window)
        self.new_facts = NewFacts(lambda: self.lanes.read(self.store.facts.head_seq),
                                  max_waiting=settings.long_poll_max, max_per_peer=settings.long_poll_per_peer)
        # Asserted facts are signed on every core the process may use.
        self.signing = SigningPool.for_this_process()
        self.facts = LocalFacts(self.store, self.identity, self.clock, on_rotation=self.reload_identity_if_rotated,
                                on_commit=self._facts_committed, sign_later=self.signing.start)
        self.erasure = Erasure(self.store, lambda: self.identity, self.audit, self.clock, self.store.db.reclaim_erased)
        self.activity = Activity(self.clock.now_ms, self.clock.now_iso)
        self.publisher = Publisher(self.store, self.audit, self.clock, settings.shared_scopes, self.lanes,
                                   federate_instructions=settings.federate_instructions,
                                   node_id=self.identity.node_id, activity=self.activity)
        self.started_at_s = self.clock.time()
        self.sessions = Sessions(self.store.sessions, self.store.apikeys, self.clock)
        self.status = StatusReader(self.store.peers, self.store.replication, self.store.activity, self.store.facts,
                                   self.audit_query, self.clock, lambda: self.identity,
                                   shared_scopes=settings.shared_scopes, started_at_s=self.started_at_s,
                                   instructions=settings.federate_instructions)
        self._declaration: declaration.Declaration | None = None
        self._manifest: dict[str, Any] | None = None
        self._refresh_not_before: dict[str, float] = {}
        self._key_refreshes: set[asyncio.Task[Any]] = set()
        self._refreshing: set[str] = set()
        self._background: _Background | None = None
        self._declaration_at: datetime | None = None
        self._lock = threading.Lock()
        self._ping: asyncio.Task[None] | None = None

    def declaration(self) -> declaration.Declaration:
        """This node's signed declaration, re-signed every hour so it is always fresh."""
        self._refresh_signed()
        return self._declaration  # type: ignore[return-value]

    def manifest(self) -> dict[str, Any]:
        """The self-signed manifest reference nodes fetch at approval (see manifest.py)."""
        self._refresh_signed()
        return self._manifest  # type: ignore[return-value]

    def _refresh_signed(self) -> None:
        now = self.clock.now()
        with self._lock:
            if self._declaration_at is None or now - self._declaration_at > DECLARATION_REFRESH:
                ident = self.identity
                self._declaration = declaration.sign(ident, self.settings.shared_scopes, now,
                                                     node_id=ident.node_id, node_url=ident.node_url)
                self._manifest = manifest.build(ident, now, node_id=ident.node_id, node_url=ident.node_url)
                self._declaration_at = now

    def pull_options(self) -> PullOptions:
        s = self.settings
        return PullOptions(concurrency=s.pull_concurrency, timeout_s=s.pull_timeout_s, attempts=s.pull_attempts,
                           backoff_s=s.pull_backoff_s)

    def subscriber(self, options: PullOptions | None = None) -> Subscriber:
        """A subscriber pulling with ``options`` (default: ``pull_options()``)."""
        o = options or self.pull_options()
        pages = PageFetcher(self.outbound, self.mint_peer_token, timeout_s=o.timeout_s, attempts=o.attempts,
                            backoff_s=o.backoff_s, max_backoff_s=o.max_backoff_s, max_page_bytes=o.max_page_bytes)
        ingest = Ingest(self.store, self.audit, self.clock, lambda: self.facts.hlc,
                        federate_instructions=self.settings.federate_instructions)
        return Subscriber(self.store, self.clock, pages, ingest, self.lanes, find_peer=self.federation.get,
                          refresh_keys=self.federation.refresh_peer_keys, concurrency=o.concurrency,
                          page_limit=o.page_limit, max_pages=o.max_pages,
                          erasures=RemoteErasure(self.store, self.audit, self.store.db.reclaim_erased),
                          checker=self.checker)

    # -- a serving node's background work --------------------------------------------------
    async def start_background(self) -> None:
        """Start the background work of a serving node, on the running event loop: database
        upkeep (a thread), the key watch, audit sealing, the writer of API-key touches and,
        with a pull interval, the pull schedule.  ``stop_background`` ends it all."""
        if self._background is not None:
            raise RuntimeError("the background work is already running")
        maintenance = await self.lanes.write(Maintenance, self.store.db, self.clock.now_ms)
        touches = DeferredTouches()
        self.apikeys.defer_touches(touches)
        scheduler = None
        if self.settings.pull_interval_s > 0:
            scheduler = Scheduler(self.subscriber(), self.settings.pull_interval_s, wait_s=self.settings.pull_wait_s)
            scheduler.start()
        notifier = None
        if self.settings.notify_peers:
            notifier = PeerNotifier(self.outbound, lambda: self.identity, lambda: self.identity.node_id, self.clock,
                                    self.publish_rules, following=self.new_facts.following,
                                    observer=self.metrics.notification_sent,
                                    active_peers=lambda: self.lanes.read(self.store.peers.list_peers, "active"))
            notifier.start()
        tasks = [
            asyncio.create_task(watch_identity(self.reload_identity_if_rotated, lambda: self.identity.key_id,
                                               self.lanes), name="stigmem-key-watch"),
            asyncio.create_task(seal_audit(self.audit, self.settings.audit_checkpoint_interval_s, self.lanes),
                                name="stigmem-audit-seal"),
            asyncio.create_task(write_touches(touches, self.store.apikeys.touch_many, self.lanes),
                                name="stigmem-apikey-touches"),
            asyncio.create_task(write_activity(self.activity, self.store.activity, self.store.transaction,
                                               self.lanes), name="stigmem-activity"),
        ]
        self._background = _Background(maintenance, scheduler, notifier, tasks, touches)

    async def stop_background(self) -> None:
        """Stop what ``start_background`` started (pulls in flight are cancelled; each page
        they stored is committed; nonces handed in are committed; queued touches written)."""
        self.new_facts.close()
        work, self._background = self._background, None
        if work is None:
            return
        for task in work.tasks:
            task.cancel()
        await asyncio.gather(*work.tasks, return_exceptions=True)
        if work.scheduler is not None:
            await work.scheduler.stop()
        if work.notifier is not None:
            await work.notifier.stop()
        await self.peer_auth.nonces.wait_idle()
        self.apikeys.defer_touches(None)
        await flush_touches(work.touches, self.store.apikeys.touch_many, self.lanes)
        await flush_activity(self.activity, self.store.activity, self.store.transaction, self.lanes)
        await self.lanes.write(work.maintenance.stop)

    def _facts_committed(self, facts: Sequence[FactInput]) -> None:
        """New facts committed by this process: wake long-polls, notify peers (any thread)."""
        self.new_facts.committed()
        work = self._background
        if work is not None and work.notifier is not None:
            work.notifier.committed(facts)

    def pull_soon(self, peer_id: str) -> str:
        """Pull this peer now, as its notification asks (``Scheduler.pull_soon``), or
        ``"not_following"`` when this node runs no pull schedule."""
        work = self._background
        if work is None or work.scheduler is None:
            return "not_following"
        return work.scheduler.pull_soon(peer_id)

    async def database_problem(self, timeout_s: float = PING_TIMEOUT_S) -> str | None:
        """None when the database answers a trivial read (in the read lane) within
        ``timeout_s``, else why not.  Concurrent callers share one ping."""
        ping = self._ping
        if ping is None or ping.done():
            ping = self._ping = asyncio.ensure_future(self.lanes.read_within(timeout_s, self.store.ping))
            ping.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if nobody waits
        try:
            await asyncio.shield(ping)
        except TimeoutError:
            return f"the database did not answer within {timeout_s:g} s"
        except StigmemError as exc:
            return exc.message
        return None

    def rotate_key(self, grace: timedelta, *, actor: str) -> dict[str, Any]:
        """Make a new signing key, keep the old one verifying for ``grace``, then re-sign
        every local fact's origin block with the new key.

        The rotation itself is one short transaction (which also marks the re-signing as
        pending); the re-signing commits in batches, so writers elsewhere are never held
        up for long, and an interrupted re-signing resumes at the next start.
        """
        old = self.identity
        with self.store.transaction():
            new = identity.rotate(self.store.meta, self.clock, grace=grace)
            self.store.meta.set(RESIGN_PENDING, new.key_id)
            self.audit.record(ev.KEY_ROTATED, actor=actor, remote_addr="local",
                              detail={"old_key_id": old.key_id, "new_key_id": new.key_id,
                                      "grace_s": int(grace.total_seconds())})
        self._use_identity(new)
        resigned = self.resign_if_pending()
        return {"old_key_id": old.key_id, "key_id": new.key_id, "pubkey_fingerprint": new.fingerprint,
                "facts_resigned": resigned,
                "old_key_verifies_until": new.previous_keys[-1].retire_after if new.previous_keys else None}

    def resign_if_pending(self) -> int:
        """Finish re-signing local facts after a rotation, if one is pending."""
        pending = self.store.meta.get(RESIGN_PENDING)
        if pending is None:
            return 0
        if pending != self.identity.key_id:
            self._use_identity(identity.load_or_create(self.store.meta, self.clock, node_id=None, node_url=None))
        count = self.facts.resign_all()
        self.erasure.resign_all()
        with self.store.transaction():
            if self.store.meta.get(RESIGN_PENDING) == self.identity.key_id:
                self.store.meta.delete(RESIGN_PENDING)
        return count

    def refresh_peer_keys_soon(self, node_id: str) -> None:
        """After an active peer's token (or notification) failed its signature, re-read that
        peer's well-known in the background (at most once per peer every 5 minutes) to follow a
        key rotation.

        Anyone can claim any issuer, so this is rate-limited and only ever fetches the
        registered URL of a registered, active peer.
        """
        now = time.monotonic()
        if self._refresh_not_before.get(node_id, 0.0) > now or len(self._refresh_not_before) > 10_000 \
                or node_id in self._refreshing or len(self._refreshing) >= 100:
            return
        self._refreshing.add(node_id)  # until the lookup below has run: one lookup per issuer at a time
        task = asyncio.get_running_loop().create_task(self._refresh_peer_keys(node_id))
        self._key_refreshes.add(task)
        task.add_done_callback(self._key_refreshes.discard)

    async def _refresh_peer_keys(self, node_id: str) -> None:
        try:
            peer = await self.lanes.read(self.store.peers.by_node_id, node_id)
            if peer is not None and peer.status == "active":
                self._refresh_not_before[node_id] = time.monotonic() + KEY_REFRESH_EVERY_S
                self._refreshing.discard(node_id)
                await self.federation.refresh_peer_keys(peer, actor="node:auth", audit_gate=self.unauth_audit)
        except StigmemError as exc:  # e.g. database_busy: the next failing token tries again later
            log.warning("key refresh of %s failed: %s", ascii(node_id[:80]), exc.message)
        finally:
            self._refreshing.discard(node_id)

    def reload_identity_if_rotated(self) -> bool:
        """Pick up a key rotated by another process (the CLI) without a restart."""
        if self.store.meta.get("current_key_id") == self.identity.key_id:
            return False
        self._use_identity(identity.load_or_create(self.store.meta, self.clock, node_id=None, node_url=None))
        return True

    def _use_identity(self, ident: identity.NodeIdentity) -> None:
        self.identity = ident
        self.facts.identity = ident
        self.federation.identity = ident
        with self._lock:
            self._declaration_at = None  # re-sign the declaration and manifest with the new key

    def doctor(self) -> doctor.Doctor:
        """The node's health checks (``stigmem-node doctor``), wired to this node."""
        s = self.settings
        return doctor.Doctor(
            clock=self.clock, transaction=self.store.transaction, meta=self.store.meta, identity=lambda: self.identity,
            load_peppers=lambda: self.apikeys.peppers,
            pepper_source="STIGMEM_API_KEY_PEPPER" if s.pepper else str(s.pepper_path),
            active_peers=lambda: self.store.peers.list_peers("active"),
            pending_rotation=lambda: self.store.meta.get(RESIGN_PENDING), outbound=self.outbound,
            recent_token_skew=doctor.token_skew(
                doctor.audit_token_skew(self.audit_query, self.clock), self.store.activity.pulls,
                lambda node_id: (p.id if (p := self.store.peers.by_node_id(node_id)) else None), self.clock),
            verify_audit=lambda: verify_database(s.database, checkpoint_rows=s.audit_checkpoint_rows),
            declaration_max_age_s=s.declaration_max_age_s, leeway_s=s.clock_leeway_s,
            timeout_s=s.outbound_timeout_s,
        )

    def first_admin_key(self) -> str | None:
        """On a node without any API key, create one with every permission and return it
        (once; it is never stored in clear).  None if the node already has keys."""
        return self.operator_keys.first_admin_key()

    def mint_peer_token(self, peer_node_id: str, scopes: tuple[str, ...] | list[str], *, method: str | None = None,
                        path_qs: str | None = None, ttl_ms: int = tokens.DEFAULT_TTL_MS) -> str:
        """A fresh single-use token for one request to the peer ``peer_node_id``."""
        return tokens.mint(
            issuer=self.identity.node_id, audience=peer_node_id, private_key=self.identity.private_key,
            key_id=self.identity.key_id, scopes=sorted(scopes), now_ms=self.clock.now_ms(), ttl_ms=ttl_ms,
            htm=method, htu=path_qs,
        )

    def info(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "node_id": ident.node_id,
            "node_url": ident.node_url,
            "key_id": ident.key_id,
            "federation_pubkey": ident.public_key,
            "pubkey_fingerprint": ident.fingerprint,
            "shared_scopes": list(self.settings.shared_scopes),
            "database": self.settings.database_label,
            "declaration": self.declaration().as_dict(),
            "previous_keys": [k.as_dict() for k in ident.past_keys],
        }

    def close(self) -> None:
        self.checker.close()
        self.lanes.close()
        self.signing.close()
        self.store.close()
