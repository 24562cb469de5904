"""Checking a pulled page of facts, with no storage: what a subscriber checks before it stores.

Each entry must be a well-formed fact whose CID matches its content, come from the peer
itself (no relaying), carry a scope the peer declared and we granted (never ``local``), be
no instruction unless this node takes them, and verify under one of the peer's pinned keys.
``check_page`` does all of it for a page; ``prepare_page`` does all but the signatures and
gives the bytes each signature covers, for ``verify_batch`` (libsodium's strict RFC 8032
check, as ``stigmem_node.keys.verifies``) to check wherever it runs.  ``check_serially``
checks one fact after another with ``origin.verify_fact_origin``: the definition the page
checkers are tested against.  The checks against storage (a stored id, an erasure) come
when the page is stored (``replication.ingest``).

This module is what a check worker process (``stigmem_node.check_worker``) runs, so it
imports only the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from stigmem_node import facts as fm
from stigmem_node import origin as om
from stigmem_node.errors import ValidationError
from stigmem_node.vocabulary import FEDERATED_SCOPES

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CheckedPage", "PagePolicy", "PreparedPage", "Rejection", "check_page", "check_serially", "prepare_page",
           "verify_batch"]

FEDERATABLE = frozenset(FEDERATED_SCOPES)

# A rejected fact: its id (when the entry had a string one) and why.
Rejection = tuple[str | None, ValidationError]


@dataclass(frozen=True)
class PagePolicy:
    """What a page from one peer may hold: facts of ``node_id`` only, in ``scopes`` (those
    granted to the peer), instructions only if ``instructions``."""

    node_id: str
    scopes: tuple[str, ...]
    instructions: bool = False


@dataclass(frozen=True)
class CheckedPage:
    entries: list[om.PulledEntry]
    rejections: list[Rejection]

    @property
    def bad_signature(self) -> bool:
        """Whether a fact failed its origin signature (perhaps the peer rotated its key)."""
        return any(exc.code == "invalid_origin_signature" for _, exc in self.rejections)


@dataclass(frozen=True)
class PreparedPage:
    """A page checked but for its signatures: (index, entry, signed bytes or None) of the
    entries left, and (index, rejection) of those already refused."""

    pending: list[tuple[int, om.PulledEntry, bytes | None]]
    rejections: list[tuple[int, Rejection]]

    @property
    def signed(self) -> list[bytes]:
        """What the verifier checks: the signed bytes of the entries that have them."""
        return [signed for _, _, signed in self.pending if signed is not None]

    def finish(self, verdicts: bytes) -> CheckedPage:
        """The checked page, given one verdict per item of ``signed``: what ``check_serially``
        gives for the same entries and keys, in the same order."""
        entries: list[om.PulledEntry] = []
        refused = list(self.rejections)
        it = iter(verdicts)
        for index, entry, signed in self.pending:
            if signed is not None and next(it):
                entries.append(entry)
            else:
                refused.append((index, (entry.fact.id, _bad_signature(index))))
        refused.sort(key=lambda r: r[0])
        return CheckedPage(entries, [r for _, r in refused])


def check_page(policy: PagePolicy, raw_facts: Sequence[Any], keys: Sequence[bytes]) -> CheckedPage:
    """Every check of every entry of a page, under ``keys`` (raw 32-byte public keys)."""
    prepared = prepare_page(policy, raw_facts)
    return prepared.finish(verify_batch(keys, prepared.signed))


def prepare_page(policy: PagePolicy, raw_facts: Sequence[Any]) -> PreparedPage:
    """``check_page`` up to the signatures: every check but those, and the bytes each
    remaining signature covers."""
    pending: list[tuple[int, om.PulledEntry, bytes | None]] = []
    rejections: list[tuple[int, Rejection]] = []
    origins: dict[Any, fm.Origin] = {}
    for i, raw in enumerate(raw_facts):
        try:
            entry = _check_unsigned(policy, raw, i, origins)
        except ValidationError as exc:
            rejections.append((i, (_rejected_id(raw), exc)))
            continue
        pending.append((i, entry, om.fact_origin_signed(entry.fact, entry.origin, entry.origin_sig)))
    return PreparedPage(pending, rejections)


def check_serially(policy: PagePolicy, raw_facts: Sequence[Any], keys: Sequence[Ed25519PublicKey]) -> CheckedPage:
    """``check_page``, one fact after another, each signature by ``origin.verify_fact_origin``."""
    checked: list[om.PulledEntry] = []
    rejections: list[Rejection] = []
    for i, raw in enumerate(raw_facts):
        try:
            entry = _check_unsigned(policy, raw, i)
            if not om.verify_fact_origin(keys, entry.fact, entry.origin, entry.origin_sig):
                raise _bad_signature(i)
            checked.append(entry)
        except ValidationError as exc:
            rejections.append((_rejected_id(raw), exc))
    return CheckedPage(checked, rejections)


def verify_batch(keys: Sequence[bytes], items: Sequence[bytes]) -> bytes:
    """One byte per item (a signature's 64 bytes followed by what it signs): 1 if it
    verifies under any of ``keys``."""
    out = bytearray(len(items))
    for i, signed in enumerate(items):
        if len(signed) < 64:
            continue
        for key in keys:
            try:
                sodium.crypto_sign_open(signed, key)
            except BadSignatureError:
                continue
            out[i] = 1
            break
    return bytes(out)


def _check_unsigned(policy: PagePolicy, raw: Any, index: int,
                    origins: dict[Any, fm.Origin] | None = None) -> om.PulledEntry:
    entry = om.entry_from_wire(raw, field_prefix=f"facts[{index}].", origins=origins)
    fact, origin = entry.fact, entry.origin
    if origin.node_id != policy.node_id:
        raise ValidationError("origin_not_sender", "the fact's origin is not the peer that sent it (relaying is off)",
                              field=f"facts[{index}].origin.node_id")
    if fact.scope not in FEDERATABLE or fact.scope not in policy.scopes or fact.scope not in origin.allowed_scopes:
        raise ValidationError("scope_not_granted", f"scope {fact.scope!r} was not granted for this peer",
                              field=f"facts[{index}].scope")
    if fm.is_instruction(fact) and not policy.instructions:
        raise ValidationError("instruction_not_accepted",
                              "instruction facts are accepted only with STIGMEM_FEDERATE_INSTRUCTIONS",
                              field=f"facts[{index}].value.interpret_as")
    return entry


def _bad_signature(index: int) -> ValidationError:
    return ValidationError("invalid_origin_signature", "the origin signature does not verify under the peer's keys",
                           field=f"facts[{index}].origin_sig")


def _rejected_id(raw: Any) -> str | None:
    """The id a refused entry names, if it names one (for its audit row)."""
    body = raw.get("fact") if isinstance(raw, dict) else None
    fid = body.get("id") if isinstance(body, dict) else None
    return fid if isinstance(fid, str) else None
