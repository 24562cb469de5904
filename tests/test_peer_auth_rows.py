"""What PeerAuthenticator derives from a peer's rows (parsed keys, scopes, retirements) is
reused only while it is exactly right: the rows are read for every request, and a key whose
retirement passes between two requests is dropped at the second."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stigmem_node.encoding import b64url_encode
from stigmem_node.peer_auth import PeerAuthenticator

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z
RETIRE = "2027-01-15T08:00:10Z"  # T0 + 10 s


def _pub() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return b64url_encode(raw)


class Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.reads = 0

    def auth_rows(self, node_id: str) -> list[tuple[Any, ...]]:
        self.reads += 1
        return list(self.rows)


class Store:
    def __init__(self, rows: Rows) -> None:
        self.peers = rows
        self.nonces = None


def _auth(rows: Rows) -> PeerAuthenticator:
    return PeerAuthenticator(Store(rows), "us", audit=None, clock=None, lanes=None, leeway_ms=0)  # type: ignore[arg-type]


def test_a_key_retiring_between_two_requests_is_dropped_at_the_second() -> None:
    old, new = _pub(), _pub()
    rows = Rows([("p1", "active", '["public"]', "k-old", old, RETIRE), ("p1", "active", '["public"]', "k-new", new, None)])
    auth = _auth(rows)
    before = auth._peer("n1", T0 + 10_000)  # the last millisecond of the old key
    assert before is not None and [k for k, _ in before[0].keys] == ["k-old", "k-new"]
    after = auth._peer("n1", T0 + 10_001)
    assert after is not None and [k for k, _ in after[0].keys] == ["k-new"]
    again = auth._peer("n1", T0 + 10_000)  # a clock that steps back sees the key again
    assert again is not None and [k for k, _ in again[0].keys] == ["k-old", "k-new"]
    assert rows.reads == 3  # the rows themselves are read for every request


def test_a_change_in_the_rows_applies_to_the_next_request() -> None:
    key = _pub()
    rows = Rows([("p1", "active", '["public"]', "k1", key, None)])
    auth = _auth(rows)
    first = auth._peer("n1", T0)
    assert first is not None and first[0].status == "active" and first[1] == ("public",)
    assert auth._peer("n1", T0 + 1) == first  # nothing changed: the same derived values
    rows.rows = [("p1", "suspended", '["public", "company"]', "k1", key, None)]
    changed = auth._peer("n1", T0 + 2)
    assert changed is not None and changed[0].status == "suspended" and changed[1] == ("public", "company")
    rows.rows = []
    assert auth._peer("n1", T0 + 3) is None
