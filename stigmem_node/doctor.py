"""``doctor``: check that a node is healthy, as an operator would one check at a time.

Each check is a ``Check(name, status, detail)`` with status ``OK``, ``WARN`` or ``FAIL``;
``FAIL`` means something an operator must fix now (the node or a federation link does not
work, or a secret is exposed), ``WARN`` something to look at.  A check that cannot run (the
database does not answer, a file cannot be read) is a ``FAIL`` of that check, never an
exception: ``Doctor.run`` always returns the whole list.

The checks: the database answers and takes a write (rolled back); the node's private files
are private (SQLite: the database, its ``-wal``/``-shm``, the pepper file; its directory is
not writable by others), checked before the node opens them (opening makes them private);
the API-key pepper is there and is the one the keys were hashed with; this node's URL
serves this node's well-known; each active peer's well-known answers with its node id, its
declaration is fresh, and its clock agrees with ours (its ``Date`` header, and the skew of
its recent tokens); this node's key age and any unfinished rotation; the audit chain.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import stat
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from stigmem_node.audit_query import AuditQuery
from stigmem_node.audit_verify import VerifyReport
from stigmem_node.clock import Clock, iso, parse_rfc3339
from stigmem_node.errors import StigmemError
from stigmem_node.identity import NodeIdentity
from stigmem_node.outbound import WELL_KNOWN_MAX_BYTES, Outbound, node_base
from stigmem_node.store.activity import PeerPull
from stigmem_node.store.db import StorageError
from stigmem_node.store.files import companions
from stigmem_node.store.meta import MetaRepo
from stigmem_node.store.peers import PeerRecord

OK, WARN, FAIL = "OK", "WARN", "FAIL"
KEY_MAX_AGE = timedelta(days=365)
PROBE_KEY = "doctor_probe"  # node_meta: written and rolled back by the database check
# What a check may meet and report instead of raising: the node's own errors, storage errors,
# the file system, and values that do not parse.
_EXPECTED = (StigmemError, StorageError, OSError, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def report(checks: Sequence[Check]) -> dict[str, Any]:
    """The ``--json`` shape: every check, and ``ok`` (no ``FAIL``)."""
    return {"checks": [c.as_dict() for c in checks], "ok": all(c.status != FAIL for c in checks)}


def _message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, StigmemError) else (str(exc) or type(exc).__name__)
    return "".join(c if c.isprintable() else " " for c in text)[:300]


def _guard(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except _EXPECTED as exc:
        return Check(name, FAIL, _message(exc))


# -- file modes (before the node opens its files) ----------------------------------------------
def file_mode_checks(db_path: Path | None, pepper_path: Path | None) -> list[Check]:
    """The modes of a SQLite node's private files (``db_path``: None on PostgreSQL) and of the
    pepper file (None: the pepper is in the environment).  Readable by others: ``FAIL`` (the
    database holds the node's private key); a directory others may write in: ``WARN`` (they
    could replace the database)."""
    files: list[Path] = []
    if db_path is not None:
        files += [db_path, *companions(db_path)]
    if pepper_path is not None:
        files.append(pepper_path)
    if not files:
        return []
    loose: list[str] = []
    for path in files:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue  # a -wal/-shm exists only while the database is open; the pepper is checked apart
        except OSError as exc:
            return [Check("file modes", FAIL, f"cannot read the mode of {path}: {exc.strerror}")]
        if mode & 0o077:
            loose.append(f"{path} is {mode:04o}")
    checks = [Check("file modes", FAIL, "readable by other users: " + "; ".join(loose)
                    + " (the node makes them 0600 when it opens them; find what changed them)") if loose
              else Check("file modes", OK, "private (0600): " + ", ".join(p.name for p in files if p.exists()))]
    if db_path is not None:
        directory = db_path.resolve().parent
        try:
            dmode = stat.S_IMODE(os.stat(directory).st_mode)
        except OSError as exc:
            checks.append(Check("directory mode", FAIL, f"cannot read the mode of {directory}: {exc.strerror}"))
        else:
            checks.append(Check("directory mode", WARN, f"{directory} is {dmode:04o}: other users may replace the "
                                "database; make it 0700") if dmode & 0o022
                          else Check("directory mode", OK, f"{directory} is {dmode:04o}"))
    return checks


def unreachable_database(message: str) -> list[Check]:
    """The report when the node cannot even be opened."""
    return [Check("database", FAIL, message)]


#: Token rejections whose skew says something about the peer's clock.
CLOCK_REJECTIONS = ("iat_in_future", "nbf_in_future", "token_expired")
RECENT = timedelta(hours=1)


def audit_token_skew(query: AuditQuery, clock: Clock) -> Callable[[str], int | None]:
    """``recent_token_skew`` read from the audit trail: the ``skew_ms`` (now - iat) of the
    peer's newest token rejected for its time (``CLOCK_REJECTIONS``) within the last hour.
    Accepted tokens leave no row, so a peer whose tokens pass has None here."""

    def skew(node_id: str) -> int | None:
        since = iso(clock.now() - RECENT)
        newest: tuple[int, int] | None = None
        for entry in query.page(query.where(peer=node_id, event_type="token_rejected", since=since), cursor=None,
                                limit=200, descending=True).entries:
            value = entry["detail"].get("skew_ms") if isinstance(entry["detail"], dict) else None
            if entry["reason"] in CLOCK_REJECTIONS and isinstance(value, int) and not isinstance(value, bool) \
                    and (newest is None or entry["seq"] > newest[0]):
                newest = (entry["seq"], value)
        return newest[1] if newest else None

    return skew


def token_skew(rejected: Callable[[str], int | None], accepted: Callable[[], dict[str, PeerPull]],
               peer_id_of: Callable[[str], str | None], clock: Clock) -> Callable[[str], int | None]:
    """``recent_token_skew``: a token rejected for its time within the last hour
    (``rejected``, e.g. ``audit_token_skew``) if there is one, else the skew of the peer's
    last accepted token, as the publisher recorded it (``store.activity``), if it pulled
    within the last hour."""

    def skew(node_id: str) -> int | None:
        refused = rejected(node_id)
        if refused is not None:
            return refused
        peer_id = peer_id_of(node_id)
        pull = accepted().get(peer_id) if peer_id is not None else None
        if pull is None or pull.token_skew_ms is None or pull.last_pull_at < iso(clock.now() - RECENT):
            return None
        return pull.token_skew_ms

    return skew


class _Rollback(Exception):
    """Ends the database check's transaction without committing its write."""


@dataclass(frozen=True)
class _Fetched:
    doc: dict[str, Any] | None
    date: datetime | None
    error: str | None


class Doctor:
    def __init__(self, *, clock: Clock, transaction: Callable[[], AbstractContextManager[Any]], meta: MetaRepo,
                 identity: Callable[[], NodeIdentity], load_peppers: Callable[[], object], pepper_source: str,
                 active_peers: Callable[[], list[PeerRecord]], pending_rotation: Callable[[], str | None],
                 outbound: Outbound,
                 recent_token_skew: Callable[[str], int | None], verify_audit: Callable[[], VerifyReport],
                 declaration_max_age_s: int, leeway_s: int, timeout_s: float) -> None:
        """``recent_token_skew(node_id)``: the skew (ms, now - iat) of the peer's most recent
        token this node judged, or None.  ``pending_rotation``: the key id whose re-signing
        after a rotation is unfinished, or None.  ``timeout_s`` bounds each well-known fetch."""
        self.clock = clock
        self.transaction = transaction
        self.meta = meta
        self.identity = identity
        self.load_peppers = load_peppers
        self.pepper_source = pepper_source
        self.active_peers = active_peers
        self.pending_rotation = pending_rotation
        self.outbound = outbound
        self.recent_token_skew = recent_token_skew
        self.verify_audit = verify_audit
        self.max_age = timedelta(seconds=declaration_max_age_s)
        self.leeway = timedelta(seconds=leeway_s)
        self.timeout_s = timeout_s

    def run(self, file_checks: Sequence[Check] = ()) -> list[Check]:
        """Every check, in order (``file_checks``, made before the node was opened, after the
        database's).  Storage is read here, off any event loop; the fetches run in one loop."""
        checks = [_guard("database", self._database), *file_checks, _guard("pepper", self._pepper)]
        try:
            peers = self.active_peers()
            skews = {p.node_id: self.recent_token_skew(p.node_id) for p in peers}
        except _EXPECTED as exc:
            peers, skews = [], {}
            checks.append(Check("peers", FAIL, f"cannot list the active peers: {_message(exc)}"))
        ident = self.identity()
        own, fetched = asyncio.run(self._fetch_all(ident.node_url, [p.node_url for p in peers]))
        checks.append(self._node_url(ident, own))
        if not peers and "peers" not in {c.name for c in checks}:
            checks.append(Check("peers", OK, "no active peer"))
        for peer, got in zip(peers, fetched, strict=True):
            checks += self._peer(peer, got, skews.get(peer.node_id))
        checks += [_guard("key age", lambda: self._key_age(ident)), _guard("rotation", self._rotation),
                   _guard("audit chain", self._audit)]
        return checks

    # -- local ---------------------------------------------------------------------------------
    def _database(self) -> Check:
        try:
            with self.transaction():
                self.meta.set(PROBE_KEY, self.clock.now_iso())
                raise _Rollback
        except _Rollback:
            pass
        if self.meta.get(PROBE_KEY) is not None:
            return Check("database", FAIL, "a rolled-back write is visible")
        return Check("database", OK, "answers and takes a write (rolled back)")

    def _pepper(self) -> Check:
        self.load_peppers()
        return Check("pepper", OK, f"present ({self.pepper_source}) and matches the API keys' pepper")

    def _key_age(self, ident: NodeIdentity) -> Check:
        (row,) = [k for k in self.meta.keys() if k.key_id == ident.key_id]  # noqa: SIM118 - a repository
        age = self.clock.now() - parse_rfc3339(row.created_at)
        detail = f"key {ident.key_id} is {age.days} days old"
        if age > KEY_MAX_AGE:
            return Check("key age", WARN, f"{detail}: rotate it (stigmem-node keys rotate)")
        return Check("key age", OK, detail)

    def _rotation(self) -> Check:
        pending = self.pending_rotation()
        if pending is not None:
            return Check("rotation", WARN, f"re-signing local facts with key {pending} is unfinished; "
                         "serve (or keys rotate) resumes it")
        return Check("rotation", OK, "no rotation pending")

    def _audit(self) -> Check:
        result = self.verify_audit()
        return Check("audit chain", OK if result.ok else FAIL, result.human())

    # -- over the network ----------------------------------------------------------------------
    async def _fetch_all(self, own_url: str, urls: list[str]) -> tuple[_Fetched, list[_Fetched]]:
        async with self.outbound.client(timeout_s=self.timeout_s) as client:
            results = await asyncio.gather(*(self._fetch(client, u) for u in [own_url, *urls]))
        return results[0], list(results[1:])

    async def _fetch(self, client: Any, node_url: str) -> _Fetched:
        if not node_url:
            return _Fetched(None, None, "no node URL")
        try:
            url = node_base(node_url).join("/.well-known/stigmem")
            answer = await self.outbound.fetch(url, client=client, max_bytes=WELL_KNOWN_MAX_BYTES,
                                               timeout_s=self.timeout_s, headers={"Accept": "application/json"})
        except StigmemError as exc:
            return _Fetched(None, None, f"{_message(exc)} ({exc.code})")
        date = None
        try:
            date = email.utils.parsedate_to_datetime(answer.headers.get("date", ""))
        except (TypeError, ValueError):
            date = None
        if answer.status != 200:
            return _Fetched(None, date, f"{url} answered HTTP {answer.status}")
        try:
            doc = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            return _Fetched(None, date, f"{url} did not answer a JSON object")
        return _Fetched(doc, date, None)

    def _node_url(self, ident: NodeIdentity, got: _Fetched) -> Check:
        name = "node url"
        if got.doc is None:
            return Check(name, FAIL, f"{ident.node_url or '(none)'}: {got.error}; peers cannot reach this node")
        if got.doc.get("node_id") != ident.node_id:
            return Check(name, FAIL, f"{ident.node_url} serves another node ({str(got.doc.get('node_id'))[:80]!r})")
        if got.doc.get("federation_pubkey") != ident.public_key:
            return Check(name, WARN, f"{ident.node_url} serves this node with another key than {ident.key_id} "
                         "(a rotation the server has not picked up yet?)")
        return Check(name, OK, f"{ident.node_url} serves this node and key {ident.key_id}")

    def _peer(self, peer: PeerRecord, got: _Fetched, token_skew_ms: int | None) -> list[Check]:
        label = f"peer {peer.node_id}"
        if got.doc is None:
            reach = Check(f"{label} reachable", FAIL, f"{peer.node_url}: {got.error}")
        elif got.doc.get("node_id") != peer.node_id:
            reach = Check(f"{label} reachable", FAIL, f"{peer.node_url} serves another node "
                          f"({str(got.doc.get('node_id'))[:80]!r})")
        else:
            reach = Check(f"{label} reachable", OK, f"{peer.node_url} answers its well-known")
        return [reach, self._declaration(label, got), self._skew(label, got, token_skew_ms)]

    def _declaration(self, label: str, got: _Fetched) -> Check:
        name = f"{label} declaration"
        declaration = (got.doc or {}).get("declaration")
        if not isinstance(declaration, dict) or not isinstance(declaration.get("signed_at"), str):
            return Check(name, WARN, "no declaration to check (its well-known is unreachable or has none)")
        try:
            signed = parse_rfc3339(declaration["signed_at"])
        except ValueError:
            return Check(name, FAIL, "its signed_at is not an RFC 3339 time")
        age = self.clock.now() - signed
        if age > self.max_age:
            return Check(name, WARN, f"signed {int(age.total_seconds())} s ago, over the maximum age of "
                         f"{int(self.max_age.total_seconds())} s: a registration would refuse it")
        if -age > self.leeway:
            return Check(name, WARN, f"signed {int(-age.total_seconds())} s in the future")
        return Check(name, OK, f"signed {max(0, int(age.total_seconds()))} s ago")

    def _skew(self, label: str, got: _Fetched, token_skew_ms: int | None) -> Check:
        """Skews beyond the token leeway make tokens fail (``FAIL``); beyond half of it, ``WARN``."""
        name = f"{label} clock"
        parts: list[str] = []
        worst = 0.0
        if got.date is not None:
            skew_s = (self.clock.now() - got.date).total_seconds()
            worst = abs(skew_s)
            parts.append(f"Date header {skew_s:+.0f} s (1 s resolution)")
        if token_skew_ms is not None:
            worst = max(worst, abs(token_skew_ms) / 1000)
            parts.append(f"its most recent token {token_skew_ms / 1000:+.1f} s")
        if not parts:
            return Check(name, WARN, "nothing to compare: no Date header and no recent token")
        leeway = self.leeway.total_seconds()
        detail = "; ".join(parts) + f" (leeway {leeway:g} s)"
        status = FAIL if worst > leeway else WARN if worst > leeway / 2 else OK
        return Check(name, status, detail)
