"""Telling peers of new facts (``STIGMEM_NOTIFY_PEERS``): the sending side of ``notification``.

When this process commits new facts, each active peer that may read one of them (a scope this
node shares and grants the peer; an instruction only where instructions are federated) gets a
signed notification, ``POST /v1/federation/notify``, and pulls at once.  Not notified: a peer
that follows this node by long-poll (one is waiting here, or ended a moment ago: it hears of
the facts anyway), and a peer in its backoff.

Bounded in every direction:

- one notification in flight per peer; facts committed meanwhile make one more, sent when it
  returns (a burst of asserts costs a peer a notification or two, not one each);
- a round at most every ``SPACING_S``, reading the active peers at most every ``PEERS_TTL_S``
  (a peer approved or suspended here is seen within that time);
- each exchange within the outbound timeout, its answer read up to a few KiB (``outbound``);
- a peer that has no such endpoint (404, 405, 501: a reference node) is left alone for
  ``UNSUPPORTED_WAIT_S``; one that refuses it (another 4xx: it does not have us as an active
  peer, say) for ``REFUSED_WAIT_S``; one that fails (5xx, no answer) waits 1 s, 2 s, 4 s, …
  up to ``MAX_FAILURE_WAIT_S``; a 429 its ``Retry-After``.

Facts committed by other processes (the command line, other replicas) are notified by none:
their peers learn of them at their next long-poll or pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

from stigmem_node import notification
from stigmem_node.clock import Clock
from stigmem_node.errors import OutboundError, StigmemError
from stigmem_node.facts import FactInput, is_instruction
from stigmem_node.keys import Signer
from stigmem_node.metrics import PublishRules
from stigmem_node.outbound import Outbound, error_code_of, node_base, retry_after_s
from stigmem_node.store.db import StorageError
from stigmem_node.store.peers import PeerRecord

log = logging.getLogger("stigmem_node.notifier")

NOTIFY_PATH = "/v1/federation/notify"
PEERS_NEVER = 1e9  # the active peers were never read


class PeerNotifier:
    SPACING_S = 0.02
    PEERS_TTL_S = 1.0
    UNSUPPORTED_WAIT_S = 3600.0
    REFUSED_WAIT_S = 300.0
    MAX_FAILURE_WAIT_S = 300.0
    MAX_RETRY_AFTER_S = 300.0

    def __init__(self, outbound: Outbound, signer: Callable[[], Signer], node_id: Callable[[], str], clock: Clock,
                 rules: PublishRules, *, active_peers: Callable[[], Awaitable[Sequence[PeerRecord]]],
                 following: Callable[[str], bool], observer: Callable[[str], None] | None = None) -> None:
        """``signer``/``node_id``: this node's (current) identity; ``active_peers``: reads the
        active peers (off the loop); ``following(peer_id)``: the peer follows this node by
        long-poll (``NewFacts.following``); ``observer``: told how each notification ended
        (``metrics.NOTIFICATION_OUTCOMES``)."""
        self.outbound = outbound
        self.signer = signer
        self.node_id = node_id
        self.clock = clock
        self.rules = rules
        self.active_peers = active_peers
        self.following = following
        self.observer = observer
        # Rounds run after commits, and notifications decided on (sent, or to be sent once the
        # one in flight returns); how they ended is the observer's (the node's metrics).
        self.rounds = 0
        self.queued = 0
        self._lock = threading.Lock()
        self._kinds: set[tuple[str, bool]] = set()  # (scope, instruction?) of facts committed since the last round
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._peers: tuple[float, Sequence[PeerRecord]] = (-PEERS_NEVER, ())  # (read when, active peers)

    def start(self) -> None:
        """Start notifying (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._client = self.outbound.client()
        self._task = asyncio.create_task(self._run(), name="stigmem-notify-peers")
        self._task.add_done_callback(_log_crash)

    def committed(self, facts: Sequence[FactInput]) -> None:
        """New facts were committed by this process (any thread)."""
        loop, kick = self._loop, self._kick
        if loop is None or kick is None or loop.is_closed():
            return
        kinds = {(f.scope, is_instruction(f)) for f in facts}  # at most 8: the facts themselves are not kept
        with self._lock:
            self._kinds |= kinds
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to notify
            loop.call_soon_threadsafe(kick.set)

    def _readable(self, peer: PeerRecord, scopes: set[tuple[str, bool]]) -> bool:
        return any(scope in self.rules.shared_scopes and scope in peer.allowed_scopes
                   and (self.rules.instructions or not instruction) for scope, instruction in scopes)

    async def _run(self) -> None:
        kick = self._kick
        if kick is None:
            raise RuntimeError("the notifier is not running")
        while True:
            await kick.wait()
            kick.clear()
            with self._lock:
                scopes, self._kinds = self._kinds, set()
            now = time.monotonic()
            read_at, peers = self._peers
            if now - read_at > self.PEERS_TTL_S:
                try:
                    peers = await self.active_peers()
                except (StorageError, StigmemError) as exc:  # the database is away: peers pull by themselves
                    log.warning("cannot list peers to notify: %s", getattr(exc, "message", exc))
                    continue
                self._peers = (now, peers)
            for peer in peers:
                if (not self._readable(peer, scopes) or self.following(peer.id)
                        or self._not_before.get(peer.id, 0) > now):
                    continue
                self.queued += 1
                task = self._sending.get(peer.id)
                if task is not None and not task.done():
                    self._again.add(peer.id)
                else:
                    task = asyncio.create_task(self._send(peer), name=f"notify {peer.node_id}")
                    task.add_done_callback(_log_crash)
                    self._sending[peer.id] = task
            self.rounds += 1
            await asyncio.sleep(self.SPACING_S)

    async def _send(self, peer: PeerRecord) -> None:
        """Notify ``peer``, and again while facts for it were committed meanwhile."""
        while True:
            self._again.discard(peer.id)
            wait = await self._notify(peer)
            if wait:
                self._not_before[peer.id] = time.monotonic() + wait
                self._again.discard(peer.id)
                return
            if peer.id not in self._again:
                return

    async def _notify(self, peer: PeerRecord) -> float:
        """One notification; the seconds to leave the peer alone after it (0: none)."""
        outcome, wait = await self._exchange(peer)
        if self.observer is not None:
            self.observer(outcome)
        return wait

    async def _exchange(self, peer: PeerRecord) -> tuple[str, float]:
        client = self._client
        if client is None:
            raise RuntimeError("the notifier is not running")
        note = notification.mint(self.signer(), issuer=self.node_id(), audience=peer.node_id,
                                 now_ms=self.clock.now_ms())
        try:
            answer = await self.outbound.post(node_base(peer.node_url).join(NOTIFY_PATH), note.body, client=client,
                                              headers=note.headers)
        except OutboundError as exc:
            return "failed", self._failed(peer, exc.message)
        status = answer.status
        if 200 <= status < 300:
            self._failures.pop(peer.id, None)
            return "delivered", 0.0
        if status in (404, 405, 501):
            log.info("peer %s takes no notifications (HTTP %d); not notified for %.0f s",
                     peer.node_id, status, self.UNSUPPORTED_WAIT_S)
            return "unsupported", self.UNSUPPORTED_WAIT_S
        if status == 429:
            retry = retry_after_s(answer.headers.get("retry-after"))
            return "throttled", min(retry, self.MAX_RETRY_AFTER_S) if retry is not None else 5.0
        if 400 <= status < 500:
            log.warning("peer %s refused a notification (HTTP %d: %s); not notified for %.0f s", peer.node_id,
                        status, error_code_of(answer.body) or "-", self.REFUSED_WAIT_S)
            return "refused", self.REFUSED_WAIT_S
        return "failed", self._failed(peer, f"HTTP {status}")

    def _failed(self, peer: PeerRecord, why: str) -> float:
        failures = self._failures[peer.id] = self._failures.get(peer.id, 0) + 1
        wait = min(self.MAX_FAILURE_WAIT_S, 2.0 ** (failures - 1))
        log.warning("notifying peer %s failed (%s); next try in %.0f s at the earliest", peer.node_id, why, wait)
        return wait

    async def stop(self) -> None:
        """Stop notifying: the loop and the notifications in flight end, the client closes."""
        tasks = [t for t in [self._task, *self._sending.values()] if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        self._loop = self._kick = None


def _log_crash(task: asyncio.Task[None]) -> None:
    """A notifier task that ended on an unexpected error (a bug) says so, with its traceback,
    instead of stopping in silence."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped on an unexpected error", task.get_name(), exc_info=task.exception())
