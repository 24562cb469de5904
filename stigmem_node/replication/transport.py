"""Fetching one page of a peer's facts.

Each request carries a fresh single-use peer token bound to its method and path, and goes
through the node's one guarded outbound path (``stigmem_node.outbound``): ``Accept-Encoding:
identity`` and raw bytes against the size cap, one deadline for the whole request, no
redirect followed.  Network errors, timeouts, 5xx and 429 are retried with exponential
backoff and jitter (``Retry-After`` honoured, up to a minute); anything else is final.  The
answer must be a v2 page ``{v, facts, cursor, has_more}`` of at most the facts asked for.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from stigmem_node.errors import OutboundError
from stigmem_node.outbound import Outbound, error_code_of, node_base, retry_after_s
from stigmem_node.replication.results import PullError
from stigmem_node.store.peers import PeerRecord
from stigmem_node.tombstones import TOMBSTONE_TUPLE_VERSION

MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_RETRY_AFTER_S = 60.0
MAX_CURSOR_CHARS = 512


class TokenMinter(Protocol):
    """Mints a fresh single-use token for one request to a peer (``Node.mint_peer_token``)."""

    def __call__(self, peer_node_id: str, scopes: tuple[str, ...] | list[str], *, method: str | None = None,
                 path_qs: str | None = None) -> str: ...


@dataclass(frozen=True)
class Page:
    """A v2 page as the peer sent it (``raw``, checked to be a v2 page), its cursor as text.

    Its fact entries are not kept parsed: a page waits as its bytes (about a fifth of the
    memory of its parsed entries) until a check worker parses it; ``facts`` parses them again
    for a check in this process."""

    cursor: str | None
    has_more: bool
    raw: bytes

    @property
    def facts(self) -> list[Any]:
        """The raw fact entries (unchecked), parsed from ``raw`` on each call."""
        facts: list[Any] = json.loads(self.raw)["facts"]
        return facts


class _Retry(Exception):
    def __init__(self, error: PullError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class PageFetcher:
    def __init__(self, outbound: Outbound, mint_token: TokenMinter, *, timeout_s: float = 10.0, attempts: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, max_page_bytes: int = MAX_PAGE_BYTES) -> None:
        self.outbound = outbound
        self.mint_token = mint_token
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_page_bytes = max_page_bytes

    def client(self, max_connections: int | None) -> httpx.AsyncClient:
        """A client for ``fetch`` with at most ``max_connections`` open (None: no limit)."""
        return self.outbound.client(timeout_s=self.timeout_s, limits=httpx.Limits(max_connections=max_connections))

    def check_peer_url(self, peer: PeerRecord) -> None:
        """Refuse a peer whose stored URL this node must not fetch.  Raises ``OutboundError``."""
        self.outbound.check_url(str(node_base(peer.node_url)))

    async def fetch(self, client: httpx.AsyncClient, peer: PeerRecord, cursor: str | None, limit: int, *,
                    wait_s: int = 0) -> Page:
        """The page after ``cursor``, retried as above.  Raises ``PullError``.  ``wait_s``: a
        long-poll (the peer may hold the request that long for new facts): its deadline is
        that much longer, and it is tried once (the caller falls back on any error)."""
        query = f"limit={limit}" + (f"&cursor={quote(cursor, safe='')}" if cursor else "")
        if wait_s:
            query += f"&wait={wait_s}"
        body = await self._get(client, peer, f"/v1/federation/facts?{query}", wait_s=wait_s)
        return parse_page(body, limit)

    async def fetch_tombstones(self, client: httpx.AsyncClient, peer: PeerRecord, since: str | None,
                               limit: int) -> TombstonePage:
        """The page of the peer's tombstones after ``since``, retried as ``fetch``."""
        query = f"tv={TOMBSTONE_TUPLE_VERSION}&limit={limit}" + (f"&since={quote(since, safe='')}" if since else "")
        body = await self._get(client, peer, f"/v1/federation/tombstones?{query}")
        return parse_tombstone_page(body, limit, since)

    async def _get(self, client: httpx.AsyncClient, peer: PeerRecord, path_qs: str, *, wait_s: int = 0) -> bytes:
        url = node_base(peer.node_url).join(path_qs)
        attempts = 1 if wait_s else self.attempts
        for attempt in range(1, attempts + 1):
            token = self.mint_token(peer.node_id, peer.allowed_scopes, method="GET", path_qs=path_qs)
            try:
                return await self._get_body(client, url, token, self.timeout_s + wait_s)
            except _Retry as retry:
                if attempt == attempts:
                    raise retry.error from None
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay *= 1 + random.random() * 0.25  # noqa: S311 - jitter, not a secret
                if retry.retry_after is not None:
                    delay = max(delay, min(retry.retry_after, MAX_RETRY_AFTER_S))
                await asyncio.sleep(delay)
        raise PullError("pull_failed", "no attempt was made")  # pragma: no cover - attempts >= 1

    async def _get_body(self, client: httpx.AsyncClient, url: str, token: str, timeout_s: float) -> bytes:
        # One deadline for the whole request: a peer dripping its page byte by byte cannot
        # hold the pull for longer than timeout_s.
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            answer = await self.outbound.fetch(url, client=client, headers=headers, timeout_s=timeout_s,
                                               max_bytes=self.max_page_bytes, max_redirects=0)
        except OutboundError as exc:
            if exc.code == "fetch_timeout":
                raise _Retry(PullError("peer_timeout", f"the peer did not answer within {timeout_s:g} s")) \
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
                         retry_after_s(answer.headers.get("retry-after")))
        if status != 200:
            code = error_code_of(body)
            raise PullError("peer_refused", f"the peer answered HTTP {status}" + (f" ({code})" if code else ""),
                            status=status, peer_error=code)
        return body


def parse_page(body: bytes, limit: int) -> Page:
    """A v2 page of at most ``limit`` facts.  Raises ``PullError`` (``invalid_page``)."""
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
    return Page(_cursor(page["cursor"]), page["has_more"], body)


def _cursor(value: Any) -> str | None:
    """A page's cursor (checked: text, a number or null) as text; too long is ``invalid_page``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        if len(value) > MAX_CURSOR_CHARS:
            raise PullError("invalid_page", f"the peer's cursor is longer than {MAX_CURSOR_CHARS} characters")
        return value
    return None


@dataclass(frozen=True)
class TombstonePage:
    tombstones: list[Any]
    cursor: str | None
    has_more: bool


def parse_tombstone_page(body: bytes, limit: int, since: str | None) -> TombstonePage:
    """A v2 tombstone page ``{v, tombstones, revocations, cursor[, has_more]}`` of at most
    ``limit`` tombstones (a page without ``has_more`` has more when it is full).  Raises
    ``PullError`` (``invalid_page``)."""
    try:
        page = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PullError("invalid_page", "the peer's tombstone page is not JSON") from None
    if not (isinstance(page, dict) and page.get("v") == 2 and isinstance(page.get("tombstones"), list)
            and (page.get("cursor") is None or isinstance(page.get("cursor"), (str, int)))
            and isinstance(page.get("has_more", False), bool)):
        raise PullError("invalid_page", "the peer's tombstone page is not a v2 page {v, tombstones, cursor}")
    items = page["tombstones"]
    if len(items) > limit:
        raise PullError("invalid_page", f"the peer sent more than the {limit} tombstones asked for")
    cursor = _cursor(page["cursor"])
    has_more = page["has_more"] if "has_more" in page else len(items) == limit
    return TombstonePage(items, cursor if cursor is not None else since, bool(has_more))
