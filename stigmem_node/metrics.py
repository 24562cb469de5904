"""Prometheus metrics of one node (``GET /metrics``), with ``prometheus_client``.

Each ``Node`` owns a ``Metrics`` with a registry of its own (never the library's global
one: several nodes may run in one process).  Two kinds of series:

- counted in process as things happen: HTTP requests and their latency
  (``http.metrics``), peer-token rejections and nonces accepted (``peer_auth``, through the
  ``AuthObserver`` hook), and the time storage work takes in each lane (``offload.Lanes``'
  observer);
- read from storage at scrape time (``StorageCollector``): facts stored, nonce-cache rows,
  audit rows, peers, and the replication state per peer in both directions.  A scrape runs
  in the read lane (``exposition``), never on the event loop.

Labels are bounded: a route *template*, a method from a fixed list, a status, an error code
from the registry, a lane, and a registered peer's node id.  No token, nonce, key or raw path.
``docs/operating.md`` (Metrics) lists every series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from stigmem_node.clock import parse_rfc3339
from stigmem_node.error_codes import REGISTRY
from stigmem_node.store import Store
from stigmem_node.store.activity import PeerPull
from stigmem_node.store.db import StorageError
from stigmem_node.store.peers import PeerRecord
from stigmem_node.store.replication import ReplicationState

#: Methods counted by name; any other is counted as ``other`` (a client chooses the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route matches
LANES = ("read", "write")
#: How a notification to a peer ended: answered 2xx, 404/405/501 (no such endpoint), another
#: 4xx, 429, or 5xx / no answer.
NOTIFICATION_OUTCOMES = ("delivered", "unsupported", "refused", "throttled", "failed")

# Seconds: from a cached read (~100 µs) to a busy write lock or a 50,000-fact page.
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class MetricsSource(Protocol):
    """What the scrape reads from storage (``stigmem_node.store.Store`` through ``StoreSource``)."""

    def fact_counts(self) -> tuple[int, int]:
        """(local, received) facts stored."""
        ...

    def nonce_rows(self) -> int: ...

    def audit_rows(self) -> int: ...

    def peers(self) -> Sequence[PeerRecord]: ...

    def replication(self) -> dict[str, ReplicationState]: ...

    def pulls(self) -> dict[str, PeerPull]: ...

    def facts_behind(self, scopes: Sequence[str], cursor_seq: int, now_iso: str) -> int:
        """Facts this node would still serve in ``scopes`` after ``cursor_seq``."""
        ...


@dataclass(frozen=True)
class PublishRules:
    """What this node serves: its shared scopes (never ``local``), and whether instruction
    facts go out (``STIGMEM_FEDERATE_INSTRUCTIONS``)."""

    shared_scopes: frozenset[str]
    instructions: bool = False


class StoreSource:
    """``MetricsSource`` over the node's repositories (called in the read lane)."""

    def __init__(self, store: Store, rules: PublishRules) -> None:
        self.store = store
        self.rules = rules

    def fact_counts(self) -> tuple[int, int]:
        return self.store.facts.count_by_origin()

    def nonce_rows(self) -> int:
        return self.store.nonces.count()

    def audit_rows(self) -> int:
        head = self.store.audit.head()
        return head[0] if head else 0

    def peers(self) -> Sequence[PeerRecord]:
        return self.store.peers.list_peers()

    def replication(self) -> dict[str, ReplicationState]:
        return self.store.replication.all()

    def pulls(self) -> dict[str, PeerPull]:
        return self.store.activity.pulls()

    def facts_behind(self, scopes: Sequence[str], cursor_seq: int, now_iso: str) -> int:
        return self.store.facts.count_for_peer(scopes, cursor_seq, now_iso, instructions=self.rules.instructions)


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return parse_rfc3339(iso).timestamp()
    except ValueError:
        return None


class StorageCollector(Collector):
    """The series read from storage at each scrape (in the read lane)."""

    def __init__(self, source: MetricsSource, rules: PublishRules, now: Callable[[], float],
                 now_iso: Callable[[], str]) -> None:
        self.source = source
        self.rules = rules
        self.now = now
        self.now_iso = now_iso

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only (registering must not touch storage)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("stigmem_database_up", "1 if the scrape could read the database, else 0")
        try:
            found = list(self._read())
        except StorageError:
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        return [up, *found]

    def _read(self) -> Iterator[Metric]:
        src = self.source
        local, received = src.fact_counts()
        facts = GaugeMetricFamily("stigmem_facts_stored", "Facts stored, by origin: this node's own (local) "
                                  "or received from peers (received)", labels=["origin"])
        facts.add_metric(["local"], local)
        facts.add_metric(["received"], received)
        yield facts
        yield GaugeMetricFamily("stigmem_nonce_cache_rows", "Peer-token nonces kept against replay",
                                value=src.nonce_rows())
        yield GaugeMetricFamily("stigmem_audit_rows", "Rows in the audit log (the newest row's seq)",
                                value=src.audit_rows())
        peers = list(src.peers())
        by_status = GaugeMetricFamily("stigmem_peers", "Registered peers, by status", labels=["status"])
        counts: dict[str, int] = {}
        for p in peers:
            counts[p.status] = counts.get(p.status, 0) + 1
        for status, n in sorted(counts.items()):
            by_status.add_metric([status], n)
        yield by_status
        yield from self._subscriber(peers, src.replication())
        yield from self._publisher(peers, src.pulls())

    def _subscriber(self, peers: list[PeerRecord], states: dict[str, ReplicationState]) -> Iterator[Metric]:
        """This node pulling from each peer (``replication_state``)."""
        label = ["peer"]
        success = GaugeMetricFamily("stigmem_replication_last_success_timestamp_seconds",
                                    "When the last pull of the peer succeeded (Unix time)", labels=label)
        attempt = GaugeMetricFamily("stigmem_replication_last_attempt_timestamp_seconds",
                                    "When the last pull of the peer started (Unix time)", labels=label)
        failures = GaugeMetricFamily("stigmem_replication_consecutive_failures",
                                     "Pulls of the peer failed in a row since its last success", labels=label)
        ingested = CounterMetricFamily("stigmem_replication_facts_ingested",
                                     "Facts received from the peer and stored", labels=label)
        rejected = CounterMetricFamily("stigmem_replication_facts_rejected",
                                     "Facts received from the peer and refused", labels=label)
        lag = GaugeMetricFamily("stigmem_replication_lag_seconds",
                                "Seconds since the last successful pull of the peer", labels=label)
        now = self.now()
        for p in peers:
            st = states.get(p.id)
            if st is None:
                continue
            peer = [p.node_id]
            failures.add_metric(peer, st.consecutive_failures)
            ingested.add_metric(peer, st.facts_ingested)
            rejected.add_metric(peer, st.facts_rejected)
            at = _unix(st.last_attempt_at)
            if at is not None:
                attempt.add_metric(peer, at)
            ok = _unix(st.last_success_at)
            if ok is not None:
                success.add_metric(peer, ok)
                lag.add_metric(peer, max(0.0, now - ok))
        yield from (success, attempt, failures, ingested, rejected, lag)

    def _publisher(self, peers: list[PeerRecord], pulls: dict[str, PeerPull]) -> Iterator[Metric]:
        """Each peer pulling from this node (``peer_pulls``)."""
        label = ["peer"]
        last = GaugeMetricFamily("stigmem_peer_last_pull_timestamp_seconds",
                                 "When the peer last pulled a page from this node (Unix time)", labels=label)
        behind = GaugeMetricFamily("stigmem_peer_cursor_behind_facts",
                                   "Facts this node would still serve the peer after the cursor its last page "
                                   "reached", labels=label)
        served = CounterMetricFamily("stigmem_peer_facts_served", "Facts served to the peer", labels=label)
        now_iso = self.now_iso()
        for p in peers:
            pull = pulls.get(p.id)
            if pull is None:
                continue
            peer = [p.node_id]
            at = _unix(pull.last_pull_at)
            if at is not None:
                last.add_metric(peer, at)
            served.add_metric(peer, pull.facts_served)
            scopes = sorted(frozenset(p.allowed_scopes) & self.rules.shared_scopes)
            behind.add_metric(peer, self.source.facts_behind(scopes, pull.cursor_seq, now_iso) if scopes else 0)
        yield from (last, behind, served)


class Metrics:
    """The node's registry and the series counted in process."""

    def __init__(self, source: MetricsSource, rules: PublishRules, *, now: Callable[[], float] = time.time,
                 now_iso: Callable[[], str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("stigmem_http_requests", "HTTP requests answered, by route template, "
                                     "method and status", ["route", "method", "status"], registry=r)
        self.http_duration = Histogram("stigmem_http_request_duration_seconds", "Time from a request's arrival "
                                       "to the end of its answer, by route template", ["route", "method"],
                                       registry=r, buckets=_HTTP_BUCKETS)
        self.token_rejections = Counter("stigmem_peer_token_rejections", "Peer requests refused by peer "
                                        "authentication, by error code", ["code"], registry=r)
        self.nonces_accepted = Counter("stigmem_nonces_accepted", "Peer-token nonces accepted (each a request "
                                       "authenticated)", registry=r)
        self.notifications = Counter("stigmem_notifications_sent", "Notifications of new facts sent to peers, by "
                                     "outcome", ["outcome"], registry=r)
        for outcome in NOTIFICATION_OUTCOMES:
            self.notifications.labels(outcome)
        self.db_duration = Histogram("stigmem_db_operation_duration_seconds", "Time storage work took in a "
                                     "worker thread of a lane (read or write)", ["lane"], registry=r,
                                     buckets=_DB_BUCKETS)
        for lane in LANES:
            self.db_duration.labels(lane)  # both series exist from the start
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # The series read from storage, apart: a scrape leaves them out when the database
        # does not answer (``exposition``).
        self.storage = CollectorRegistry(auto_describe=True)
        self.storage.register(StorageCollector(source, rules, now, now_iso))
        self._down = CollectorRegistry(auto_describe=True)
        self._down.register(_DatabaseDown())

    # -- hooks of the use cases ------------------------------------------------------------
    def rejected(self, code: str) -> None:
        """A peer token was refused with ``code`` (a registry code; anything else: ``other``)."""
        self.token_rejections.labels(code if code in REGISTRY else "other").inc()

    def nonce_accepted(self) -> None:
        self.nonces_accepted.inc()

    def notification_sent(self, outcome: str) -> None:
        """A notification to a peer ended with ``outcome`` (``NOTIFICATION_OUTCOMES``)."""
        self.notifications.labels(outcome if outcome in NOTIFICATION_OUTCOMES else "failed").inc()

    def lane_work(self, lane: str, seconds: float) -> None:
        """``offload.Lanes``' observer: storage work of ``seconds`` in ``lane``."""
        self.db_duration.labels(lane).observe(seconds)

    def request(self, route: str, method: str, status: int | None, seconds: float) -> None:
        """An HTTP request answered ``status`` (None: no answer was started) after ``seconds``."""
        m = method if method in METHODS else "other"
        self.http_requests.labels(route, m, "none" if status is None else str(status)).inc()
        self.http_duration.labels(route, m).observe(seconds)

    # -- the scrape ---------------------------------------------------------------------
    def exposition(self, *, database: bool = True) -> bytes:
        """The text exposition format of every series (reads storage: run in the read lane).
        ``database``: False when the database is known not to answer: the storage series are
        left out and ``stigmem_database_up`` is 0, without waiting for it."""
        return generate_latest(self.registry) + generate_latest(self.storage if database else self._down)


class _DatabaseDown(Collector):
    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("stigmem_database_up", "1 if the scrape could read the database, else 0")
        up.add_metric([], 0.0)
        return [up]
