"""Local facts: validate, stamp (id, CID, HLC, time), sign the origin block and store.

Each fact's wire JSON, origin block and origin signature are computed once here, at
write time, so that serving a page to a peer never parses or signs anything.  A batch is
one transaction.  Asserting a body whose CID and valid_until (as an instant) this node
already holds returns the stored fact instead of a copy (idempotent retries, as the
reference node does); the same content with another valid_until is a new fact.

``valid_until`` is kept, signed and served exactly as the client wrote it; the
``valid_until`` column holds its comparable form (``facts.expiry_key``) for the filters.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stigmem_node import facts as fm
from stigmem_node import origin as om
from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_encode
from stigmem_node.errors import Erased, NotFound, ValidationError
from stigmem_node.facts import Origin
from stigmem_node.hlc import HLC
from stigmem_node.identity import NodeIdentity
from stigmem_node.signing import SignLater, sign_when_asked
from stigmem_node.store import Store
from stigmem_node.store.facts import FactRow
from stigmem_node.uuid7 import uuid7s

MAX_BATCH = 500
_CURSOR_RE = re.compile(r"[0-9]{1,18}")


class Stored:
    """A fact as an assert answers it: its JSON text (compact, non-ASCII kept: what a JSON
    response writes), whether this assert created it, and ``fact``, the text parsed (its
    wire form plus seq; parsed when first asked for: the HTTP answer needs only the text)."""

    __slots__ = ("_fact", "created", "text")

    def __init__(self, text: str, created: bool, fact: dict[str, Any] | None = None) -> None:
        self.text = text
        self.created = created
        self._fact = fact

    @property
    def fact(self) -> dict[str, Any]:
        if self._fact is None:
            self._fact = json.loads(self.text)
        return self._fact


@dataclass(frozen=True)
class Listing:
    """A page of ``GET /v1/facts``."""

    facts: list[dict[str, Any]]
    cursor: str | None
    has_more: bool
    total: int  # facts matching the filters, independent of cursor and limit


# Compact JSON, non-ASCII kept, no NaN: one encoder for every call (json.dumps with these
# options would build a new one each time).
_dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_string: Callable[[str], str] = json.encoder.encode_basestring  # a JSON string literal, as _dumps writes it


def entry_text(fact_text: str, origin_text: str, origin_sig: str) -> str:
    """A local fact's stored entry, ``_dumps({**pull_entry(fact, origin, sig),
    "origin_manifest": None, "origin_key_proof": None})``, from the texts of its parts (the
    origin block's is the same for every fact of a scope)."""
    return (f'{{"fact":{fact_text},"origin":{origin_text},"origin_sig":{_string(origin_sig)},'
            f'"origin_manifest":null,"origin_key_proof":null}}')


def row_view(row: FactRow) -> dict[str, Any]:
    """The API view of a stored fact: its wire body plus seq and provenance."""
    view: dict[str, Any] = json.loads(row.entry)["fact"]
    view["seq"] = row.seq
    view["received_from"] = row.received_from
    view["origin_node_id"] = row.origin_node_id
    return view


class LocalFacts:
    def __init__(self, store: Store, identity: NodeIdentity, clock: Clock,
                 on_rotation: Callable[[], object] | None = None,
                 on_commit: Callable[[Sequence[fm.FactInput]], object] | None = None,
                 new_ids: Callable[[int], list[str]] | None = None,
                 sign_later: SignLater = sign_when_asked) -> None:
        self.store = store
        self.identity = identity
        self.clock = clock
        # Called (inside the write transaction) when another process rotated the key, so
        # that no fact is signed with a key that is already retiring.
        self.on_rotation = on_rotation
        # Called with the new facts after a transaction that stored them commits (wakes
        # long-polls, notifies peers).
        self.on_commit = on_commit
        self._hlc: HLC | None = None
        # Ids for up to n new facts (fresh UUIDv7s; tests give a deterministic source).
        self.new_ids = new_ids or (lambda n: uuid7s(n, self.clock.now_ms()))
        # Starts signing a batch's origin tuples, returns what gives the signatures
        # (``signing.SigningPool.start``: on every core).
        self.sign_later = sign_later

    @property
    def hlc(self) -> HLC:
        """The node's clock, seeded on first use from the newest HLC it issued (so that
        commands that write no fact never scan the facts table for it)."""
        if self._hlc is None:
            self._hlc = HLC(self.clock, seed=self.store.facts.max_local_hlc())
        return self._hlc

    def validate_one(self, item: Any) -> fm.FactInput:
        """Validate the body of a single-fact POST; error fields are the fact's own (``value.v``)."""
        return fm.validate_new_fact(item)

    def validate_batch(self, items: Any) -> list[fm.FactInput]:
        if not isinstance(items, list) or not items:
            raise ValidationError("invalid_request", "facts must be a non-empty list", field="facts")
        if len(items) > MAX_BATCH:
            raise ValidationError("batch_too_large", f"at most {MAX_BATCH} facts per request", field="facts")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(fm.validate_new_fact(item))
            except ValidationError as exc:
                raise ValidationError(exc.code, f"facts[{i}]: {exc.message}",
                                      field=f"facts[{i}].{exc.field}" if exc.field else f"facts[{i}]") from None
        return out

    def assert_many(self, inputs: list[fm.FactInput]) -> list[Stored]:
        """Store validated facts in one transaction; returns them in input order.

        Each new fact's JSON text is made once: its stored entry and its ``Stored.text`` are
        built from it (``entry_text``)."""
        ident = self.identity
        first: list[int] = []  # per input: the index of the input whose fact it is
        found: dict[int, FactRow] = {}  # input index -> the stored fact it repeats
        made: dict[int, tuple[str, str]] = {}  # input index -> (new fact's id, its text)
        rows: list[tuple[Any, ...]] = []
        seen: dict[tuple[str, str | None], int] = {}  # (cid, expiry key) -> index of its first input
        keys = [(inp.cid, fm.expiry_key(inp.valid_until)) for inp in inputs]
        ids = iter(self.new_ids(len(inputs)))
        with self.store.transaction():
            if self.on_rotation is not None and self.store.meta.get("current_key_id") != ident.key_id:
                self.on_rotation()
                ident = self.identity
            held = self.store.facts.local_by_contents(
                [(inp.entity, inp.relation, *key) for inp, key in zip(inputs, keys, strict=True)])
            origins: dict[str, tuple[Origin, str]] = {}  # scope -> its origin block and that block's text
            timestamp = self.clock.now_iso()  # the batch's: its facts are asserted in one transaction
            new: list[int] = []  # the inputs that are new facts
            for i, key in enumerate(keys):
                if key in seen:
                    first.append(seen[key])
                    continue
                seen[key] = i
                first.append(i)
                existing = held.get(key)
                if existing is not None:
                    found[i] = existing
                else:
                    new.append(i)
            plan = []  # per new fact: (input index, id, CID, HLC, origin block and its text)
            for i, hlc in zip(new, self.hlc.ticks(len(new)), strict=True):
                inp = inputs[i]
                if inp.scope not in origins:
                    origin = om.origin_for(inp, node_id=ident.node_id, entity_uri=ident.node_url)
                    origins[inp.scope] = (origin, _dumps(origin.to_wire()))
                plan.append((i, next(ids), keys[i][0], hlc, *origins[inp.scope]))
            signed = self.sign_later(ident, [om.origin_tuple(origin, fact_id, cid, inputs[i].valid_until)
                                             for i, fact_id, cid, _, origin, _ in plan])
            # The facts' texts need no signature: made while the signing threads sign.
            texts = [fm.local_fact_text(inputs[i], fact_id=fact_id, cid=cid, timestamp=timestamp, hlc=hlc,
                                        origin_node_id=ident.node_id) for i, fact_id, cid, hlc, _, _ in plan]
            for (i, fact_id, cid, hlc, _, origin_text), text, raw_sig in zip(plan, texts, signed(), strict=True):
                inp = inputs[i]
                sig = b64url_encode(raw_sig)
                rows.append((
                    fact_id, cid, inp.entity, inp.relation, inp.value_type, inp.value_v, inp.interpret_as,
                    inp.source, timestamp, hlc, keys[i][1], inp.confidence, inp.scope,
                    ident.node_id, sig, entry_text(text, origin_text, sig), None, None,
                ))
                made[i] = (fact_id, text)
            seqs = self.store.facts.insert_new(rows)
        answers: dict[int, Stored] = {}
        for i, (fact_id, text) in made.items():
            answers[i] = Stored(f'{text[:-1]},"seq":{seqs[fact_id]}}}', True)
        for i, row in found.items():
            view = row_view(row)
            answers[i] = Stored(_dumps(view), False, view)
        results = [answers[j] if j == i else Stored(answers[j].text, False) for i, j in enumerate(first)]
        if made and self.on_commit is not None:
            self.on_commit([inputs[i] for i in made])
        return results

    def resign_all(self, batch: int = 2000) -> int:
        """Re-sign every local fact's origin block with the current key (after a rotation),
        a batch per transaction; returns how many facts were re-signed."""
        after, done = 0, 0
        while True:
            rows = self.store.facts.local_entries(after, batch)
            if not rows:
                return done
            entries = [json.loads(text) for _, text in rows]
            sigs = self.sign_later(self.identity, [om.origin_sig_payload(
                e["fact"]["id"], e["fact"]["cid"], e["origin"]["entity_uri"], e["origin"]["node_id"],
                e["origin"]["allowed_scopes"], e["origin"]["allowed_tenants"], e["origin"]["tenant"],
                e["fact"]["valid_until"]) for e in entries])()
            updates = []
            for (seq, _), entry, raw_sig in zip(rows, entries, sigs, strict=True):
                entry["origin_sig"] = sig = b64url_encode(raw_sig)
                updates.append((sig, _dumps(entry), seq))
            with self.store.transaction():
                self.store.facts.set_signatures(updates)
            done += len(rows)
            after = rows[-1][0]

    def get(self, fact_id: str) -> dict[str, Any]:
        row = self.store.facts.get(fact_id) if isinstance(fact_id, str) and len(fact_id) <= 256 else None
        if row is None:
            if isinstance(fact_id, str) and len(fact_id) <= 256 and self.store.tombstones.erased(fact_id):
                raise Erased("fact_erased", "this fact was erased")
            raise NotFound("fact_not_found", "no fact with this id")
        return row_view(row)

    def query(self, *, cursor: str | None, limit: int, include_expired: bool = False,
              **filters: str | None) -> tuple[list[dict[str, Any]], str | None, bool]:
        """One page of facts matching ``filters`` after ``cursor``, unexpired ones only unless
        ``include_expired``: (views, next cursor, has_more)."""
        page = self.listing(cursor=cursor, limit=limit, include_expired=include_expired, count=False, **filters)
        return page.facts, page.cursor, page.has_more

    def listing(self, *, cursor: str | None, limit: int, include_expired: bool = False, count: bool = True,
                **filters: str | None) -> Listing:
        """``query`` plus ``total`` (unless not ``count``): how many facts match the same
        filters whatever the cursor and limit.  One COUNT with the page's WHERE minus the
        cursor, at the same instant as the page's expiry filter."""
        after = parse_cursor(cursor)
        live_at = None if include_expired else self.clock.now_iso()
        rows = self.store.facts.query(after=after, limit=limit + 1, live_at=live_at, **filters)
        total = self.store.facts.count_matching(live_at=live_at, **filters) if count else -1
        has_more = len(rows) > limit
        rows = rows[:limit]
        return Listing([row_view(r) for r in rows], str(rows[-1].seq) if rows else cursor, has_more, total)


def parse_cursor(cursor: str | None) -> int:
    """Cursors are this node's commit sequence numbers, as decimal text ("" = start)."""
    if cursor is None or cursor == "":
        return 0
    if not isinstance(cursor, str) or not _CURSOR_RE.fullmatch(cursor):
        raise ValidationError("invalid_cursor", "cursor must be a value returned by this node", field="cursor")
    return int(cursor)
