"""The subscriber: pull every active peer's facts, verify each one, store it exactly once.

For each peer (concurrently, bounded): page through ``GET /v1/federation/facts`` with a
fresh single-use token per request until ``has_more`` is false.  Each pulled fact must
have the right CID, come from the peer itself (no relaying), carry a scope the peer
declared and we granted (never ``local``), verify under one of the peer's pinned keys,
and neither reuse a stored id with another CID nor extend a stored ``valid_until``.
Valid facts, the new cursor and the counters commit in one transaction per page; invalid
facts are skipped and audited.  The cursor moves by compare-and-set, so two overlapping
runs never double-count: the loser's page is dropped and it stops for that peer.

Network errors, timeouts, 5xx and 429 are retried with exponential backoff and jitter
(``Retry-After`` honoured); then the peer is reported failed and the others go on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import quote

import httpx

from stigmem_node import facts as fm
from stigmem_node import outbound
from stigmem_node.clock import parse_rfc3339
from stigmem_node.errors import OutboundError, StigmemError, ValidationError
from stigmem_node.identity import public_key_from_b64
from stigmem_node.store.peers import PeerRecord

log = logging.getLogger("stigmem_node.replication")

FACT_REJECTED = "fact_rejected"
FACTS_REJECTED_SUMMARY = "facts_rejected_summary"
AUDIT_ROWS_PER_PAGE = 20
MAX_PAGE_BYTES = 64 * 1024 * 1024
# A pass takes at most this many pages from one peer (a million facts at 500 a page), so a
# peer that always answers has_more cannot keep a cron run going for ever.
MAX_PAGES_PER_PASS = 2000
MAX_RETRY_AFTER_S = 60.0
FEDERATABLE = frozenset({"team", "company", "public"})


class PullError(StigmemError):
    """A peer could not be pulled this time (after retries where retrying makes sense)."""

    code = "pull_failed"


class _Retry(Exception):
    def __init__(self, error: PullError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class _Overlap(Exception):
    """Another run advanced this peer's cursor first."""


@dataclass
class PeerResult:
    peer_id: str
    node_id: str
    ok: bool = True
    pages: int = 0
    new: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None
    error_code: str | None = None
    note: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PassResult:
    peers: list[PeerResult] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.peers)

    def totals(self) -> dict[str, int]:
        return {
            "peers_ok": sum(p.ok for p in self.peers), "peers_failed": sum(not p.ok for p in self.peers),
            "new": sum(p.new for p in self.peers), "duplicates": sum(p.duplicates for p in self.peers),
            "rejected": sum(p.rejected for p in self.peers),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.totals(), "duration_s": round(self.duration_s, 3),
                "peers": [p.as_dict() for p in self.peers]}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Subscriber:
    def __init__(self, node, *, concurrency: int = 4, page_limit: int = 500, timeout_s: float = 10.0,
                 attempts: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 max_page_bytes: int = MAX_PAGE_BYTES, max_pages: int = MAX_PAGES_PER_PASS,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.node = node
        self.store = node.store
        self.concurrency = concurrency
        self.page_limit = page_limit
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_page_bytes = max_page_bytes
        self.max_pages = max_pages
        self.transport = transport

    def _client(self, *, pool_per_peer: bool = False) -> httpx.AsyncClient:
        # A pass holds at most ``concurrency`` peers, each using one connection at a time.  The
        # schedule runs every peer on its own, so its pool must not be smaller than the number
        # of peers: otherwise hanging peers fill it and a live peer waits for a slot (and fails
        # with a pool timeout reported as peer_timeout).
        limits = httpx.Limits(max_connections=None if pool_per_peer else self.concurrency * 2)
        return outbound.new_client(timeout_s=self.timeout_s, transport=self.transport, limits=limits)

    async def run_pass(self, peer_ref: str | None = None,
                       progress: Callable[[PeerResult], None] | None = None) -> PassResult:
        """Pull every active peer once (or only ``peer_ref``)."""
        started = time.monotonic()
        peers = [self.node.federation.get(peer_ref)] if peer_ref else self.store.peers.list_peers("active")
        sem = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            async def one(peer: PeerRecord) -> PeerResult:
                async with sem:
                    result = await self.pull_peer(client, peer)
                if progress:
                    progress(result)
                return result

            results = await asyncio.gather(*(one(p) for p in peers))
        return PassResult(list(results), time.monotonic() - started)

    async def pull_peer(self, client: httpx.AsyncClient, peer: PeerRecord) -> PeerResult:
        result = PeerResult(peer.id, peer.node_id)
        started = time.monotonic()
        clock = self.node.clock
        error: PullError | None = None
        try:
            self.store.replication.attempt(peer.id, clock.now_iso())
            if peer.status != "active":
                raise PullError("peer_not_active", f"peer is {peer.status}, not active")
            outbound.check_url(str(outbound.node_base(peer.node_url)),
                               allow_insecure_http=self.node.settings.allow_insecure_http)
            cursor = self.store.replication.get(peer.id).cursor
            keys = self._peer_keys(peer)
            refreshed = False
            limit = self.page_limit
            while True:
                if result.pages >= self.max_pages:
                    result.note = f"stopped after {self.max_pages} pages; the next pass carries on"
                    break
                try:
                    page = await self._fetch(client, peer, cursor, limit)
                except PullError as exc:
                    if exc.code != "page_too_large" or limit == 1:
                        raise
                    limit = max(1, limit // 2)  # large facts: ask for fewer per page
                    continue
                result.pages += 1
                next_cursor = page["cursor"] if page["cursor"] is not None else cursor
                # Checking (signatures above all) runs off the event loop: a serving node
                # keeps answering requests while it ingests.
                checked, rejections = await asyncio.to_thread(self._check_page, peer, page["facts"], keys)
                if not refreshed and any(exc.code == "invalid_origin_signature" for _, exc in rejections):
                    # Perhaps the peer rotated its key: follow an endorsed rotation once per pass.
                    refreshed = True
                    if await self.node.federation.refresh_peer_keys(peer, actor="node:pull") is None:
                        keys = self._peer_keys(peer)
                        checked, rejections = await asyncio.to_thread(self._check_page, peer, page["facts"], keys)
                try:
                    new, dup, rejected = self._store_page(peer, checked, rejections, cursor, next_cursor)
                except _Overlap:
                    result.note = "another pull advanced this peer's cursor first; this run stopped for it"
                    break
                result.new += new
                result.duplicates += dup
                result.rejected += rejected
                if not page["has_more"]:
                    break
                if next_cursor == cursor:
                    raise PullError("cursor_stuck", "the peer said has_more but did not move its cursor")
                cursor = next_cursor
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
            self.store.replication.finish(peer.id, clock.now_iso(),
                                          None if error is None else f"{error.code}: {error.message}")
        except sqlite3.Error:
            log.exception("cannot record the pull status of %s", peer.node_id)
        return result

    # -- fetching ------------------------------------------------------------------------
    async def _fetch(self, client: httpx.AsyncClient, peer: PeerRecord, cursor: str | None,
                     limit: int) -> dict[str, Any]:
        query = f"limit={limit}" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
        path_qs = f"/v1/federation/facts?{query}"
        url = outbound.node_base(peer.node_url).join(path_qs)
        for attempt in range(1, self.attempts + 1):
            token = self.node.mint_peer_token(peer.node_id, peer.allowed_scopes, method="GET", path_qs=path_qs)
            try:
                return await self._get_page(client, url, token, limit)
            except _Retry as retry:
                if attempt == self.attempts:
                    raise retry.error from None
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay *= 1 + random.random() * 0.25
                if retry.retry_after is not None:
                    delay = max(delay, min(retry.retry_after, MAX_RETRY_AFTER_S))
                await asyncio.sleep(delay)
        raise PullError("pull_failed", "no attempt was made")  # pragma: no cover - attempts >= 1

    async def _get_page(self, client: httpx.AsyncClient, url: str, token: str, limit: int) -> dict[str, Any]:
        # Through the one outbound path: Accept-Encoding identity and raw bytes against the
        # cap, one deadline for the whole request (a peer dripping its page byte by byte
        # cannot hold the pull for longer than timeout_s), and no redirect followed.
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            answer = await outbound.fetch(url, client=client, headers=headers, timeout_s=self.timeout_s,
                                          max_bytes=self.max_page_bytes, max_redirects=0,
                                          allow_insecure_http=self.node.settings.allow_insecure_http)
        except OutboundError as exc:
            if exc.code == "fetch_timeout":
                raise _Retry(PullError("peer_timeout", f"the peer did not answer within {self.timeout_s:g} s")) \
                    from None
            if exc.code == "fetch_failed":
                raise _Retry(PullError("peer_unreachable", f"cannot reach the peer ({exc.extra.get('cause')})")) \
                    from None
            if exc.code == "response_too_large":
                raise PullError("page_too_large", f"the peer's page exceeded {self.max_page_bytes} bytes") from None
            raise PullError(exc.code, exc.message) from None
        status, body = answer.status, answer.body
        if status == 429 or status >= 500:
            raise _Retry(PullError(f"peer_http_{status}", f"the peer answered HTTP {status}"),
                         _retry_after(answer.headers.get("retry-after")))
        if status != 200:
            code = _error_code(body)
            raise PullError("peer_refused", f"the peer answered HTTP {status}" + (f" ({code})" if code else ""),
                            status=status, peer_error=code)
        try:
            page = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PullError("invalid_page", "the peer's page is not JSON") from None
        if not (isinstance(page, dict) and page.get("v") == 2 and isinstance(page.get("facts"), list)
                and isinstance(page.get("has_more"), bool)
                and (page.get("cursor") is None or isinstance(page.get("cursor"), (str, int)))):
            raise PullError("invalid_page", "the peer's page is not a v2 page {v, facts, cursor, has_more}")
        if len(page["facts"]) > limit:
            raise PullError("invalid_page", f"the peer sent more than the {limit} facts asked for")
        if isinstance(page["cursor"], int) and not isinstance(page["cursor"], bool):
            page["cursor"] = str(page["cursor"])
        elif isinstance(page["cursor"], str) and len(page["cursor"]) > 512:
            raise PullError("invalid_page", "the peer's cursor is longer than 512 characters")
        return page

    # -- ingest --------------------------------------------------------------------------
    def _peer_keys(self, peer: PeerRecord) -> list:
        now = self.node.clock.now()
        keys = []
        for k in self.store.peers.keys(peer.id):
            if k.retire_after and parse_rfc3339(k.retire_after) < now:
                continue
            try:
                keys.append(public_key_from_b64(k.public_key))
            except ValueError:
                continue
        return keys

    def _check(self, peer: PeerRecord, raw: Any, keys: list, index: int) -> fm.PulledEntry:
        entry = fm.entry_from_wire(raw, field_prefix=f"facts[{index}].")
        fact, origin = entry.fact, entry.origin
        if origin.node_id != peer.node_id:
            raise ValidationError("origin_not_sender", "the fact's origin is not the peer that sent it (relaying is off)",
                                  field=f"facts[{index}].origin.node_id")
        if fact.scope not in FEDERATABLE or fact.scope not in peer.allowed_scopes \
                or fact.scope not in origin.allowed_scopes:
            raise ValidationError("scope_not_granted", f"scope {fact.scope!r} was not granted for this peer",
                                  field=f"facts[{index}].scope")
        if fm.is_instruction(fact) and not self.node.settings.federate_instructions:
            raise ValidationError("instruction_not_accepted",
                                  "instruction facts are accepted only with STIGMEM_FEDERATE_INSTRUCTIONS",
                                  field=f"facts[{index}].value.interpret_as")
        if not fm.verify_fact_origin(keys, fact, origin, entry.origin_sig):
            raise ValidationError("invalid_origin_signature", "the origin signature does not verify under the peer's keys",
                                  field=f"facts[{index}].origin_sig")
        return entry

    def _check_page(self, peer: PeerRecord, raw_facts: list,
                    keys: list) -> tuple[list[fm.PulledEntry], list[tuple[str | None, ValidationError]]]:
        """Check every entry of a page (no storage access: safe in a worker thread)."""
        checked: list[fm.PulledEntry] = []
        rejections: list[tuple[str | None, ValidationError]] = []
        for i, raw in enumerate(raw_facts):
            try:
                checked.append(self._check(peer, raw, keys, i))
            except ValidationError as exc:
                fid = raw.get("fact", {}).get("id") if isinstance(raw, dict) and isinstance(raw.get("fact"), dict) else None
                rejections.append((fid if isinstance(fid, str) else None, exc))
        return checked, rejections

    def _store_page(self, peer: PeerRecord, checked: list[fm.PulledEntry],
                    rejections: list[tuple[str | None, ValidationError]], cursor_before: str | None,
                    cursor_after: str | None) -> tuple[int, int, int]:
        """Store the checked facts, the cursor and the counters in one transaction."""
        rejections = list(rejections)
        now = self.node.clock.now_iso()
        hlc = self.node.facts.hlc
        with self.store.transaction():
            known = self.store.facts.known([e.fact.id for e in checked])
            rows, dup = [], 0
            seen: dict[str, tuple[str, str | None]] = {}  # id -> (cid, valid_until) stored from this page
            for entry in checked:
                fact = entry.fact
                stored = known.get(fact.id) or seen.get(fact.id)
                if stored is not None:
                    if stored[0] != fact.cid:
                        rejections.append((fact.id, ValidationError("id_collision", "a stored fact has this id and another CID")))
                    elif _extends(stored[1], fact.valid_until):
                        rejections.append((fact.id, ValidationError("valid_until_extension",
                                                                    "the fact would extend a stored valid_until")))
                    else:
                        dup += 1
                    continue
                seen[fact.id] = (fact.cid, fact.valid_until)
                if fact.hlc:
                    try:
                        hlc.receive(fact.hlc)
                    except ValidationError:
                        pass  # a skewed peer clock must not drag ours; the fact keeps its own HLC
                stamp = fact.hlc or hlc.tick()
                fact = replace(fact, hlc=stamp, received_from=peer.node_id, received_at=now)
                wire = {"fact": fm.fact_wire(fact), "origin": entry.origin.to_wire(), "origin_sig": entry.origin_sig}
                rows.append((
                    fact.id, fact.cid, fact.entity, fact.relation, fact.value_type, fact.value_v, fact.interpret_as,
                    fact.source, fact.timestamp, stamp, fact.valid_until, fact.confidence, fact.scope,
                    fact.origin_node_id, entry.origin_sig, _dumps(wire), peer.node_id, now,
                ))
            if not self.store.replication.advance(peer.id, expected_cursor=cursor_before, cursor=cursor_after,
                                                  ingested=len(rows), rejected=len(rejections)):
                raise _Overlap()
            self.store.facts.insert_many(rows)
            self._audit_rejections(peer, rejections)
        return len(rows), dup, len(rejections)

    def _audit_rejections(self, peer: PeerRecord, rejections: list[tuple[str | None, ValidationError]]) -> None:
        """One row per rejected fact, up to a bound per page; the rest in one summary row
        that still names every fact and its reason (so a peer cannot flood the trail)."""
        actor = f"peer:{peer.node_id}"
        for fact_id, exc in rejections[:AUDIT_ROWS_PER_PAGE]:
            self.node.audit.record(FACT_REJECTED, peer_id=peer.id, actor=actor, reason=exc.code,
                                   detail={"fact_id": (fact_id or "")[:256] or None, "field": exc.field,
                                           "message": exc.message[:300]})
        rest = rejections[AUDIT_ROWS_PER_PAGE:]
        if rest:
            by_reason: dict[str, int] = {}
            for _, exc in rest:
                by_reason[exc.code] = by_reason.get(exc.code, 0) + 1
            self.node.audit.record(FACTS_REJECTED_SUMMARY, peer_id=peer.id, actor=actor, reason="many_rejections",
                                   detail={"count": len(rest), "by_reason": by_reason,
                                           "facts": [[(fid or "")[:64], exc.code] for fid, exc in rest]})


def _extends(stored: str | None, incoming: str | None) -> bool:
    """Whether ``incoming`` would extend a stored finite ``valid_until``."""
    if stored is None:
        return False
    if incoming is None:
        return True
    try:
        return fm.parse_time(incoming) > fm.parse_time(stored)
    except (TypeError, ValueError, OverflowError):
        return True


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110)."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_code(body: bytes) -> str | None:
    try:
        obj = json.loads(body[:4096])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    code = obj.get("error") or obj.get("detail") if isinstance(obj, dict) else None
    return code[:80] if isinstance(code, str) else None


class Scheduler:
    """Pull every active peer every ``interval_s`` seconds, each peer on its own.

    Each tick starts a pull for every active peer that has none running, so a slow or
    dead peer only ever delays itself.  A peer whose pull failed waits longer after each
    failure (twice the interval, then four times, … at most ``MAX_FAILURE_WAIT_S``), so a
    dead peer is not hammered.  ``stop()`` cancels the loop and the pulls in flight; a
    cancelled pull loses nothing (each page commits on its own).
    """

    MAX_FAILURE_WAIT_S = 300.0

    def __init__(self, subscriber: Subscriber, interval_s: float) -> None:
        self.subscriber = subscriber
        self.interval_s = interval_s
        self._running: dict[str, asyncio.Task] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._loop_task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = self.subscriber._client(pool_per_peer=True)
        self._loop_task = asyncio.create_task(self._loop(), name="stigmem-pull-schedule")

    async def _loop(self) -> None:
        while True:
            try:
                peers = self.subscriber.store.peers.list_peers("active")
            except sqlite3.Error:
                log.exception("cannot list peers to pull; trying again next interval")
                peers = []
            now = time.monotonic()
            active = {p.id for p in peers}
            for gone in [pid for pid in self._running if pid not in active and self._running[pid].done()]:
                self._running.pop(gone, None)
                self._failures.pop(gone, None)
                self._not_before.pop(gone, None)
            for peer in peers:
                task = self._running.get(peer.id)
                if (task is None or task.done()) and self._not_before.get(peer.id, 0.0) <= now:
                    self._running[peer.id] = asyncio.create_task(self._pull(peer), name=f"pull {peer.node_id}")
            await asyncio.sleep(self.interval_s)

    async def _pull(self, peer: PeerRecord) -> None:
        assert self._client is not None
        result = await self.subscriber.pull_peer(self._client, peer)
        if result.ok:
            self._failures.pop(peer.id, None)
            self._not_before.pop(peer.id, None)
            return
        failures = self._failures[peer.id] = self._failures.get(peer.id, 0) + 1
        wait = min(self.MAX_FAILURE_WAIT_S, self.interval_s * 2 ** failures)
        self._not_before[peer.id] = time.monotonic() + wait
        log.warning("pull from %s failed (%s); next try in %.0f s", peer.node_id, result.error, wait)

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._running.values()] if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
