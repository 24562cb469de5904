"""The status page's read model: this node, its peers, recent audit events, facts per minute.

``StatusReader.report`` gathers everything the page shows in one read (callers run it in
the read lane); it knows no HTTP and renders nothing (``http.status_html`` does).

For each peer it joins two views:

- as a *publisher* (``peer_pulls``): the peer's last pull from us ("last pull in") and how
  far its cursor is behind our head, in facts: the facts the publisher would still serve
  it after the cursor its last page reached (``behind_facts``: our own unexpired facts in
  the scopes granted to the peer and shared by this node; from the start when it never
  pulled), the same count as the metric ``stigmem_peer_cursor_behind_facts``;
- as a *subscriber* (``replication_state``): our last successful pull of the peer ("last
  pull out"), its last error and consecutive failures, and the lag in seconds: the time
  since that last success (``lag_s``; None when we never pulled it successfully).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stigmem_node import __version__
from stigmem_node.activity import minute_of
from stigmem_node.audit_query import AuditQuery
from stigmem_node.clock import Clock, parse_rfc3339
from stigmem_node.encoding import fingerprint
from stigmem_node.identity import NodeIdentity
from stigmem_node.store.activity import ActivityRepo
from stigmem_node.store.facts import FactRepo
from stigmem_node.store.peers import PeerRepo
from stigmem_node.store.replication import ReplicationRepo

AUDIT_EVENTS = 20  # recent audit events shown
CHART_MINUTES = 60  # facts per minute, in and out, over the last hour


@dataclass(frozen=True)
class NodeSummary:
    node_id: str
    node_url: str
    key_id: str
    fingerprint: str
    uptime_s: int
    version: str


@dataclass(frozen=True)
class PeerStatus:
    peer_id: str
    node_id: str
    node_url: str
    status: str
    fingerprint: str
    scopes: tuple[str, ...]
    last_pull_in: str | None  # their last pull from us
    behind_facts: int  # our facts they have not pulled yet
    last_pull_out: str | None  # our last successful pull of them
    last_attempt_out: str | None
    lag_s: int | None  # seconds since last_pull_out
    last_error: str | None
    consecutive_failures: int


@dataclass(frozen=True)
class Traffic:
    """Facts per minute over the last ``CHART_MINUTES`` minutes, oldest first, zeros filled."""

    first_minute: int  # epoch minute of the first bucket
    inbound: tuple[int, ...]
    outbound: tuple[int, ...]


@dataclass(frozen=True)
class StatusReport:
    generated_at: str
    node: NodeSummary
    peers: tuple[PeerStatus, ...]
    audit: tuple[dict[str, Any], ...]  # newest first; empty without audit:read
    traffic: Traffic


class StatusReader:
    def __init__(self, peers: PeerRepo, replication: ReplicationRepo, activity: ActivityRepo, facts: FactRepo,
                 audit: AuditQuery, clock: Clock, identity: Callable[[], NodeIdentity], *,
                 shared_scopes: tuple[str, ...], started_at_s: float, version: str = __version__,
                 instructions: bool = False) -> None:
        self.peers = peers
        self.replication = replication
        self.activity = activity
        self.facts = facts
        self.audit = audit
        self.clock = clock
        self.identity = identity
        self.shared = frozenset(shared_scopes) - {"local"}
        self.started_at_s = started_at_s
        self.version = version
        self.instructions = instructions  # instruction facts are served (STIGMEM_FEDERATE_INSTRUCTIONS)

    def report(self, *, with_audit: bool) -> StatusReport:
        """Everything the page shows; the audit events only ``with_audit``."""
        ident = self.identity()
        node = NodeSummary(ident.node_id, ident.node_url, ident.key_id, ident.fingerprint,
                           max(0, int(self.clock.time() - self.started_at_s)), self.version)
        audit = tuple(reversed(self.audit.newest(AUDIT_EVENTS))) if with_audit else ()
        return StatusReport(self.clock.now_iso(), node, self.peer_statuses(), audit, self.traffic())

    def peer_statuses(self) -> tuple[PeerStatus, ...]:
        pulls = self.activity.pulls()
        states = self.replication.all()
        now, now_iso = self.clock.now(), self.clock.now_iso()
        out: list[PeerStatus] = []
        for peer in self.peers.list_peers():
            pull = pulls.get(peer.id)
            state = states.get(peer.id)
            success = state.last_success_at if state else None
            lag = None
            if success is not None:
                try:
                    lag = max(0, int((now - parse_rfc3339(success)).total_seconds()))
                except ValueError:
                    lag = None
            scopes = sorted(frozenset(peer.allowed_scopes) & self.shared)
            out.append(PeerStatus(
                peer.id, peer.node_id, peer.node_url, peer.status, fingerprint(peer.federation_pubkey),
                tuple(peer.allowed_scopes), pull.last_pull_at if pull else None,
                self.facts.count_for_peer(scopes, pull.cursor_seq if pull else 0, now_iso,
                                          instructions=self.instructions) if scopes else 0,
                success, state.last_attempt_at if state else None, lag,
                state.last_error if state else None, state.consecutive_failures if state else 0,
            ))
        return tuple(out)

    def traffic(self) -> Traffic:
        first = minute_of(self.clock.now_ms()) - CHART_MINUTES + 1
        buckets = {"in": [0] * CHART_MINUTES, "out": [0] * CHART_MINUTES}
        for minute, direction, facts in self.activity.traffic(first):
            i = minute - first
            if 0 <= i < CHART_MINUTES and direction in buckets:
                buckets[direction][i] += facts
        return Traffic(first, tuple(buckets["in"]), tuple(buckets["out"]))

