"""The subscriber: pull every active peer's facts, verify each one, store it exactly once;
then apply the peer's tombstones (``erasures``).

For each peer (concurrently, bounded): page through ``GET /v1/federation/facts``
(``transport.PageFetcher``: a fresh token per request, retries) until ``has_more`` is
false, checking each page off the event loop (``checker``: in worker processes, several
pages at once) and storing it with the new cursor in one transaction (``ingest.Ingest``),
in the write lane; every read of storage runs in the read
lane (``stigmem_node.offload``), so a serving node's loop never waits for the database.
A signature failure first triggers one refresh of the peer's keys per pass (an endorsed
key rotation is followed).  When a peer cannot be pulled it is reported failed and the
others go on; two overlapping runs never double-count (the loser stops for that peer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from stigmem_node.clock import Clock
from stigmem_node.errors import OutboundError, StigmemError
from stigmem_node.federation import KeyRefresh
from stigmem_node.offload import Offload
from stigmem_node.page_check import CheckedPage
from stigmem_node.replication.checker import InlineChecker, PageChecker
from stigmem_node.replication.erasures import RemoteErasure, check_page
from stigmem_node.replication.ingest import Ingest, Overlap
from stigmem_node.replication.results import PageProgress, PassResult, PeerResult, PullError, log_summary
from stigmem_node.replication.transport import MAX_PAGE_BYTES, Page, PageFetcher
from stigmem_node.store.db import StorageError
from stigmem_node.store.peers import PeerRecord, PeerRepo
from stigmem_node.store.replication import ReplicationRepo

log = logging.getLogger("stigmem_node.replication")

# A pass takes at most this many pages from one peer (a million facts at 500 a page), so a
# peer that always answers has_more cannot keep a cron run going for ever.
MAX_PAGES_PER_PASS = 2000
# The first page of a pass is at most this large, so that the checker has work at once (a
# page of 500 takes a while to serve, send and check); the next ones are full.
FIRST_PAGE_LIMIT = 100
TOMBSTONE_PAGE_LIMIT = 500


@dataclass(frozen=True)
class PullOptions:
    """How a subscriber pulls (``Node.pull_options()`` reads them from the settings)."""

    concurrency: int = 4
    page_limit: int = 500
    timeout_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_page_bytes: int = MAX_PAGE_BYTES
    max_pages: int = MAX_PAGES_PER_PASS


@dataclass(frozen=True)
class _Ahead:
    """A page fetched ahead of the one being stored, with its check under way (started under
    ``keys``); or, with no page, the error its fetch ended with."""

    page: Page | None
    cursor: str | None  # fetched after this cursor
    next_cursor: str | None
    last: bool  # no page is fetched after it in this pass
    keys: list[bytes]
    check: asyncio.Future[CheckedPage] | None
    error: Exception | None = None


class SubscriberStore(Protocol):
    """The storage the subscriber itself uses (``stigmem_node.store.Store`` is one)."""

    @property
    def peers(self) -> PeerRepo: ...

    @property
    def replication(self) -> ReplicationRepo: ...


class KeyRefresher(Protocol):
    """Re-reads a peer's well-known to follow a key rotation (``Federation.refresh_peer_keys``)."""

    async def __call__(self, peer: PeerRecord, *, actor: str) -> KeyRefresh: ...


class Subscriber:
    def __init__(self, store: SubscriberStore, clock: Clock, pages: PageFetcher, ingest: Ingest, lanes: Offload, *,
                 find_peer: Callable[[str], PeerRecord], refresh_keys: KeyRefresher,
                 concurrency: int = 4, page_limit: int = 500, max_pages: int = MAX_PAGES_PER_PASS,
                 erasures: RemoteErasure | None = None, checker: PageChecker | None = None) -> None:
        """``find_peer``: a peer by peer id or node id (raises ``NotFound``; run in the read lane).
        ``checker``: checks the pulled pages (default: in a thread of this process)."""
        self.store = store
        self.lanes = lanes
        self.clock = clock
        self.pages = pages
        self.ingest = ingest
        self.find_peer = find_peer
        self.refresh_keys = refresh_keys
        self.concurrency = concurrency
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.erasures = erasures
        self.checker: PageChecker = checker or InlineChecker()

    async def current(self, peer_id: str) -> PeerRecord:
        """The peer as stored now (its status may have changed); raises ``NotFound``."""
        return await self.lanes.read(self.find_peer, peer_id)

    async def active_peers(self) -> list[PeerRecord]:
        return await self.lanes.read(self.store.peers.list_peers, "active")

    def client(self, *, pool_per_peer: bool = False) -> httpx.AsyncClient:
        # A pass holds at most ``concurrency`` peers, each using one connection at a time.  The
        # schedule runs every peer on its own, so its pool must not be smaller than the number
        # of peers: otherwise hanging peers fill it and a live peer waits for a slot (and fails
        # with a pool timeout reported as peer_timeout).
        return self.pages.client(None if pool_per_peer else self.concurrency * 2)

    async def run_pass(self, peer_ref: str | None = None,
                       progress: Callable[[PeerResult], None] | None = None,
                       on_page: Callable[[PageProgress], None] | None = None) -> PassResult:
        """Pull every active peer once (or only ``peer_ref``); ``progress`` is called with each
        peer's result, ``on_page`` after each committed page of facts.  Logs one
        ``pull_summary`` line per peer."""
        started = time.monotonic()
        peers = [await self.lanes.read(self.find_peer, peer_ref)] if peer_ref else await self.active_peers()
        if peers:
            await asyncio.to_thread(self.checker.warm)  # its workers start while the first pages are asked for
        sem = asyncio.Semaphore(self.concurrency)
        async with self.client() as client:
            async def one(peer: PeerRecord) -> PeerResult:
                async with sem:
                    result = await self.pull_peer(client, peer, on_page)
                log_summary(log, result, trigger="pull")
                if progress:
                    progress(result)
                return result

            results = await asyncio.gather(*(one(p) for p in peers))
        return PassResult(list(results), time.monotonic() - started)

    async def pull_peer(self, client: httpx.AsyncClient, peer: PeerRecord,
                        on_page: Callable[[PageProgress], None] | None = None, *, wait_s: int = 0) -> PeerResult:
        """Pull one peer, if no other process of this node (a replica) is pulling it now.
        ``wait_s``: the pass's first page is a long-poll (``wait=S``): when caught up, the
        pass waits up to that long for the peer's next facts."""
        lease = await self.lanes.read(self.store.replication.pull_lease, peer.id)
        if lease is None:
            result = PeerResult(peer.id, peer.node_id)
            result.note = "skipped: another process of this node is pulling this peer now"
            return result
        try:
            return await self._pull_leased(client, peer, on_page, wait_s)
        finally:
            # Shielded: a cancelled pull still gives its lease back.
            await asyncio.shield(self.lanes.read(lease.release))

    async def _pull_leased(self, client: httpx.AsyncClient, peer: PeerRecord,
                           on_page: Callable[[PageProgress], None] | None, wait_s: int = 0) -> PeerResult:
        result = PeerResult(peer.id, peer.node_id)
        started = time.monotonic()
        error: PullError | None = None
        try:
            await self.lanes.write(self.store.replication.attempt, peer.id, self.clock.now_iso())
            if peer.status != "active":
                raise PullError("peer_not_active", f"peer is {peer.status}, not active")
            self.pages.check_peer_url(peer)
            await self._pull(client, peer, result, on_page, wait_s)
            await self._pull_tombstones(client, peer, result)
        except OutboundError as exc:
            error = PullError(exc.code, exc.message)
        except PullError as exc:
            error = exc
        except StigmemError as exc:  # e.g. database_busy
            error = PullError(exc.code, exc.message)
        except Exception:  # one peer's surprise must not end the pass for the others
            log.exception("pull from %s failed unexpectedly", peer.node_id)
            error = PullError("internal_error", "the pull failed unexpectedly; see the node's log")
        if error is not None:
            result.ok, result.error, result.error_code = False, error.message, error.code
        result.duration_s = time.monotonic() - started
        try:
            await self.lanes.write(self.store.replication.finish, peer.id, self.clock.now_iso(),
                                   None if error is None else f"{error.code}: {error.message}")
        except (StorageError, StigmemError):
            log.exception("cannot record the pull status of %s", peer.node_id)
        return result

    async def _pull_tombstones(self, client: httpx.AsyncClient, peer: PeerRecord, result: PeerResult) -> None:
        """After the facts: page through the peer's tombstones from their own cursor and apply
        them.  A peer that serves none it can be asked for (a reference node refuses the
        request) is noted, not failed: its facts were pulled."""
        if self.erasures is None:
            return
        try:
            since = await self.lanes.read(self.store.replication.tombstone_cursor, peer.id)
            keys = await self.lanes.read(self.ingest.peer_keys, peer)
            refreshed = False
            for _ in range(self.max_pages):
                page = await self.pages.fetch_tombstones(client, peer, since, TOMBSTONE_PAGE_LIMIT)
                checked = await asyncio.to_thread(check_page, peer, page.tombstones, keys)
                if checked.bad_signature and not refreshed:
                    refreshed = True  # perhaps the peer rotated its key: follow it once per pass
                    if (await self.refresh_keys(peer, actor="node:pull")).rotated:
                        keys = await self.lanes.read(self.ingest.peer_keys, peer)
                        checked = await asyncio.to_thread(check_page, peer, page.tombstones, keys)
                applied = await self.lanes.write(self.erasures.store_page, peer, checked, page.cursor)
                result.tombstones += applied.applied
                result.erased += applied.facts_erased
                result.tombstones_refused += applied.refused
                if not page.has_more or page.cursor == since:
                    return
                since = page.cursor
        except (PullError, OutboundError, StigmemError) as exc:
            note = f"tombstones not pulled ({exc.code})"
            result.note = f"{result.note}; {note}" if result.note else note

    async def _pull(self, client: httpx.AsyncClient, peer: PeerRecord, result: PeerResult,
                    on_page: Callable[[PageProgress], None] | None = None, wait_s: int = 0) -> None:
        """Page through the peer from its stored cursor, counting into ``result`` (the first
        page, of at most ``FIRST_PAGE_LIMIT`` facts, a long-poll of ``wait_s`` seconds, if given).

        Pages flow through three stages at once: while page N is stored, the checker (worker
        processes, on the other cores) checks the pages after it, as many at once as it has
        workers, and the peer serves the next one.  Pages are still stored one after another,
        in order, each with its cursor in one transaction; work ahead of a pull that stops is
        dropped unseen.  A page that could not be fetched stops the pull only after the pages
        before it are stored."""
        started = time.monotonic()
        await asyncio.to_thread(self.checker.warm)  # up by the first page (starting one forks)
        cursor = (await self.lanes.read(self.store.replication.get, peer.id)).cursor
        policy = self.ingest.policy(peer)
        keys = await self._raw_keys(peer)
        refreshed = False
        ahead: asyncio.Queue[_Ahead] = asyncio.Queue(maxsize=self.checker.parallel)
        checks: set[asyncio.Future[CheckedPage]] = set()  # started and not yet taken: dropped if the pull stops

        async def fetch_ahead(cursor: str | None, wait_s: int) -> None:
            """Fetch page after page (the first a long-poll), starting each one's check, until
            the last one of this pass, or a fetch fails (then queued as the error)."""
            limit, pages = self.page_limit, 0
            while True:
                asked = min(limit, FIRST_PAGE_LIMIT) if pages == 0 else limit
                try:
                    page, took = await self._fetch(client, peer, cursor, asked, wait_s)
                except Exception as exc:  # noqa: BLE001 - raised by the pull, once the pages before are stored
                    await ahead.put(_Ahead(None, cursor, cursor, True, keys, None, exc))
                    return
                if took < asked:
                    limit = took  # the peer's facts are large: fewer a page from now on
                pages, wait_s = pages + 1, 0
                next_cursor = page.cursor if page.cursor is not None else cursor
                last = not page.has_more or next_cursor == cursor or pages >= self.max_pages
                check = asyncio.ensure_future(self.checker.check(policy, keys, page))
                checks.add(check)
                await ahead.put(_Ahead(page, cursor, next_cursor, last, keys, check))
                if last:
                    return
                cursor = next_cursor

        fetcher = asyncio.ensure_future(fetch_ahead(cursor, wait_s))
        try:
            while True:
                item = await ahead.get()
                if item.page is None or item.check is None:
                    raise item.error or PullError("pull_failed", "no page")
                result.pages += 1
                checked = await item.check
                checks.discard(item.check)
                if checked.bad_signature and not refreshed:
                    # Perhaps the peer rotated its key: follow an endorsed rotation once per pass.
                    refreshed = True
                    if (await self.refresh_keys(peer, actor="node:pull")).rotated:
                        keys = await self._raw_keys(peer)
                if checked.bad_signature and item.keys is not keys:  # checked before the keys changed
                    checked = await self.checker.check(policy, keys, item.page)
                if not await self._store(peer, checked, item.cursor, item.next_cursor, result, on_page, started,
                                         result.pages):
                    return
                if item.last:
                    if not item.page.has_more:
                        return
                    if item.next_cursor == item.cursor:
                        raise PullError("cursor_stuck", "the peer said has_more but did not move its cursor")
                    result.note = f"stopped after {self.max_pages} pages; the next pass carries on"
                    return
        finally:
            # Work ahead of a pull that stopped: dropped unseen.
            unfinished: list[asyncio.Future[Any]] = [fetcher, *checks]
            for pending in unfinished:
                pending.cancel()
            await asyncio.wait(unfinished)
            for pending in unfinished:
                if not pending.cancelled():
                    pending.exception()  # retrieved, so that asyncio does not report it

    async def _raw_keys(self, peer: PeerRecord) -> list[bytes]:
        """The peer's usable keys, raw, as the checker takes them."""
        return [k.public_bytes_raw() for k in await self.lanes.read(self.ingest.peer_keys, peer)]

    async def _store(self, peer: PeerRecord, checked: CheckedPage, cursor: str | None, next_cursor: str | None,
                     result: PeerResult, on_page: Callable[[PageProgress], None] | None, started: float,
                     pages: int) -> bool:
        """Store a checked page with its cursor, counting into ``result``; False if another
        pull advanced the cursor first (nothing stored)."""
        try:
            stored = await self.lanes.write(self.ingest.store_page, peer, checked, cursor, next_cursor)
        except Overlap:
            result.note = "another pull advanced this peer's cursor first; this run stopped for it"
            return False
        result.new += stored.new
        result.duplicates += stored.duplicates
        result.rejected += stored.rejected
        if on_page is not None:
            on_page(PageProgress(peer.id, peer.node_id, pages, result.new + result.duplicates,
                                 result.rejected, time.monotonic() - started))
        return True

    async def _fetch(self, client: httpx.AsyncClient, peer: PeerRecord, cursor: str | None, limit: int,
                     wait_s: int) -> tuple[Page, int]:
        """The page after ``cursor``, and the page size it took: a peer whose page is too large
        to take is asked for fewer facts a page, down to one."""
        while True:
            try:
                return await self.pages.fetch(client, peer, cursor, limit, wait_s=wait_s), limit
            except PullError as exc:
                if exc.code != "page_too_large" or limit == 1:
                    raise
                limit = max(1, limit // 2)  # large facts: ask for fewer per page
