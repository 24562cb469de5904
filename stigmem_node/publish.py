"""Serve this node's facts to an authenticated peer: one page of the v2 pull envelope.

Permitted scopes = the token's scopes ∩ the scopes the peer was granted ∩ what this
node shares; ``local`` never leaves the node (invariant 5).  Only this node's own facts
are served (no relaying), unexpired, in commit order.  The cursor is our ``seq``.
Instruction facts stay home unless the operator opts in (STIGMEM_FEDERATE_INSTRUCTIONS):
receivers must quarantine them, and reference receivers without a quarantine stop pulling.
Pages are assembled from the JSON stored at write time, without parsing it.  A page is
read in the read lane, in the same worker call as the token check
(``PeerAuthenticator.authenticate_then``); the audit row of a refused scope is written in
the write lane.  A caught-up subscriber may ask to wait (``wait=S``): ``long_poll`` holds
the request until new facts commit (``stigmem_node.new_facts``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from stigmem_node.activity import Activity
from stigmem_node.audit import AuditTrail
from stigmem_node.clock import Clock
from stigmem_node.errors import Forbidden
from stigmem_node.hlc import format_hlc
from stigmem_node.local_facts import parse_cursor
from stigmem_node.new_facts import NewFacts
from stigmem_node.offload import Offload
from stigmem_node.peer_auth import AuthenticatedPeer
from stigmem_node.store import Store
from stigmem_node.store.tombstones import TombstoneRow

MAX_LIMIT = 500
MAX_PAGE_CHARS = 8 * 1024 * 1024  # of fact entries per page (a page of 500 large facts would be ~128 MiB)
DEFAULT_LIMIT = 100
SCOPE_VIOLATION = "scope_violation"


# Reference receivers refuse a fact whose HLC is more than 30 days old, and then stop
# pulling altogether; older facts are served with "hlc": null (receivers stamp their own).
HLC_SERVE_MAX_AGE_MS = 29 * 24 * 3600 * 1000


def _without_hlc(entry: str, hlc: str) -> str:
    return entry.replace(f'"hlc":"{hlc}"', '"hlc":null', 1)


@dataclass(frozen=True)
class WaitablePage:
    """A page's body, how many facts it holds, and the head read before it."""

    body: bytes
    facts: int
    head: int


class Publisher:
    def __init__(self, store: Store, audit: AuditTrail, clock: Clock, shared_scopes: tuple[str, ...],
                 lanes: Offload, *, federate_instructions: bool = False, node_id: str = "",
                 activity: Activity | None = None) -> None:
        self.store = store
        self.lanes = lanes
        self.audit = audit
        self.clock = clock
        self.shared = frozenset(shared_scopes) - {"local"}
        self.federate_instructions = federate_instructions
        self.node_id = node_id  # this node's: only its own tombstones are served
        self.activity = activity  # notes each page served (for metrics and the status page)

    def permitted(self, peer: AuthenticatedPeer) -> frozenset[str]:
        return frozenset(peer.token.scopes) & frozenset(peer.allowed_scopes) & self.shared

    def waitable_page(self, peer: AuthenticatedPeer, *, cursor: str | None, limit: int, scope: str | None,
                      ) -> WaitablePage | tuple[Forbidden, dict[str, Any]]:
        """As ``page_or_refusal``, with the head of the facts table read *before* the page:
        a fact the page missed has a larger ``seq`` (see ``new_facts``)."""
        refusal = self._refusal(peer, scope)
        if refusal is not None:
            return refusal
        head = self.store.facts.head_seq()
        body, facts = self._page_counted(peer, cursor=cursor, limit=limit, scope=scope)
        return WaitablePage(body, facts, head)

    async def long_poll(self, peer: AuthenticatedPeer, first: WaitablePage, new_facts: NewFacts, wait_s: float, *,
                        cursor: str | None, limit: int, scope: str | None) -> bytes:
        """``first``, or if it holds no fact, the first page that does once new facts
        commit, or the empty page when ``wait_s`` runs out (or the node stops)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        page = first
        while page.facts == 0:
            left = deadline - loop.time()
            if left <= 0 or not await new_facts.wait_above(peer.peer_id, page.head, left):
                break
            again = await self.lanes.read(self.waitable_page, peer, cursor=cursor, limit=limit, scope=scope)
            if not isinstance(again, WaitablePage):  # cannot happen: the scope was checked before
                break
            page = again
        return page.body

    def page_or_refusal(self, peer: AuthenticatedPeer, *, cursor: str | None, limit: int, scope: str | None,
                        ) -> bytes | tuple[Forbidden, dict[str, Any]]:
        """The page's body (read here, in the caller's worker thread), or why the peer may not
        read ``scope`` (for ``answer``)."""
        refusal = self._refusal(peer, scope)
        return refusal if refusal is not None else self._page(peer, cursor=cursor, limit=limit, scope=scope)

    async def answer(self, peer: AuthenticatedPeer, outcome: bytes | tuple[Forbidden, dict[str, Any]],
                     remote_addr: str | None) -> bytes:
        """The body of ``page_or_refusal``, or its refusal raised once its audit row is
        written (in the write lane)."""
        if isinstance(outcome, bytes):
            return outcome
        await self.lanes.write(self._audit_refusal, peer, outcome, remote_addr)
        raise outcome[0]

    def page(self, peer: AuthenticatedPeer, *, cursor: str | None, limit: int, scope: str | None,
             remote_addr: str | None = None) -> bytes:
        """The JSON body of one page; raises ``Forbidden`` for a scope the peer may not read."""
        refusal = self._refusal(peer, scope)
        if refusal is not None:
            self._audit_refusal(peer, refusal, remote_addr)
            raise refusal[0]
        return self._page(peer, cursor=cursor, limit=limit, scope=scope)

    def _refusal(self, peer: AuthenticatedPeer, scope: str | None) -> tuple[Forbidden, dict[str, Any]] | None:
        """Why the peer may not read ``scope`` (the error and its audit detail), or None."""
        permitted = self.permitted(peer)
        if scope is not None and scope not in permitted:
            return (Forbidden("scope_not_permitted", "this scope is not permitted for this peer"),
                    {"requested_scope": scope[:40], "permitted": sorted(permitted)})
        if not permitted:
            return (Forbidden("no_permitted_scopes", "no scope is both granted to this peer and shared by this node"),
                    {"token_scopes": list(peer.token.scopes)[:10]})
        return None

    def _audit_refusal(self, peer: AuthenticatedPeer, refusal: tuple[Forbidden, dict[str, Any]],
                       remote_addr: str | None) -> None:
        self.audit.record(SCOPE_VIOLATION, peer_id=peer.peer_id, actor=f"peer:{peer.node_id}",
                          reason=refusal[0].code, remote_addr=remote_addr, detail=refusal[1])

    def _page(self, peer: AuthenticatedPeer, *, cursor: str | None, limit: int, scope: str | None) -> bytes:
        return self._page_counted(peer, cursor=cursor, limit=limit, scope=scope)[0]

    def _page_counted(self, peer: AuthenticatedPeer, *, cursor: str | None, limit: int, scope: str | None,
                      ) -> tuple[bytes, int]:
        permitted = self.permitted(peer)
        after = parse_cursor(cursor)
        scopes = [scope] if scope is not None else sorted(permitted)
        # A page holds `limit` facts, or fewer when they would pass MAX_PAGE_CHARS.
        rows, cut = self.store.facts.page_for_peer(scopes, after, limit + 1, self.clock.now_iso(),
                                                   instructions=self.federate_instructions, max_chars=MAX_PAGE_CHARS)
        has_more = cut or len(rows) > limit
        rows = rows[:limit]
        next_cursor = str(rows[-1][0]) if rows else str(after)
        if self.activity is not None:
            iat = peer.token.claims.get("iat")
            skew = self.clock.now_ms() - iat if isinstance(iat, int) else None
            self.activity.served(peer.peer_id, rows[-1][0] if rows else after, len(rows), skew)
        old = format_hlc(self.clock.now_ms() - HLC_SERVE_MAX_AGE_MS, 0)
        entries = ",".join([entry if hlc >= old else _without_hlc(entry, hlc) for _, entry, hlc in rows])
        text = (f'{{"v":2,"facts":[{entries}],"cursor":{json.dumps(next_cursor)},'
                f'"has_more":{"true" if has_more else "false"}}}')
        return text.encode("utf-8"), len(rows)

    def tombstone_page(self, peer: AuthenticatedPeer, *, since: str | None, limit: int, empty: bool = False) -> bytes:
        """One page of this node's own signed tombstones that cover a scope the peer may read
        (the scope of an erased fact; for an entity, the scopes of our erased facts of it),
        in commit order (``empty``: none, for a subscriber that did not ask for them).  The
        cursor is the tombstones' ``seq``; an empty page carries the request's ``since`` back
        (``null`` without one), as reference subscribers expect."""
        after = parse_cursor(since)
        rows = [] if empty else self.store.tombstones.page_for_peer(self.node_id, sorted(self.permitted(peer)),
                                                                    after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        cursor = str(rows[-1].seq) if rows else since
        wire = [tombstone_wire(r) for r in rows]
        return json.dumps({"v": 2, "tombstones": wire, "revocations": [], "cursor": cursor, "has_more": has_more},
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tombstone_wire(row: TombstoneRow) -> dict[str, Any]:
    """A stored tombstone as served: ``tombstones.Tombstone.to_wire``."""
    return {"kind": row.kind, "fact_id": row.fact_id, "entity": row.entity, "cid": row.cid,
            "erased_at": row.erased_at, "origin_node_id": row.origin_node_id, "reason": row.reason,
            "origin_sig": row.origin_sig}
