"""Audit rows that traffic without a valid credential can cause share one set of budgets.

In-process: a real node on a real SQLite file, driven through its ASGI app with a
different client address per request (the address the failure limits and budgets key
on).  The budgets' clock is moved by the test, so "one window" is exact.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.federation import Actor
from stigmem_node.http import create_app
from stigmem_node.node import Node
from stigmem_node.ratelimit import UnauthenticatedAuditGate
from tests.engines import sql
from tests.fakepeer import FakePeer, raw_public
from tests.inproc import asgi_get

PULL = "/v1/federation/facts"
PEERS = "/v1/federation/peers"
GLOBAL = 600  # documented: rows per auth window, all addresses and kinds together (docs/security.md)


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def addr(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


async def fail(app, address: str, path: str, times: int) -> list[int]:
    return [(await asgi_get(app, path, client=(address, 40000), headers={"Authorization": f"Bearer bad.{i}"}))[0]
            for i in range(times)]


def rows(db: Path | str) -> list[dict]:
    out = sql(db, "SELECT seq, event_type, remote_addr, detail FROM audit_log ORDER BY seq")
    return [{"seq": s, "event_type": e, "remote_addr": a, "detail": json.loads(d)} for s, e, a, d in out]


@pytest.fixture
def served(tmp_path, engine):
    node = Node(engine.settings(tmp_path / "n.db", auth_window_s=3600))
    ticks = Ticks()
    node.unauth_audit.clock = ticks
    yield node, create_app(node), ticks
    node.close()


def test_a_thousand_addresses_failing_in_one_window_add_at_most_the_global_budget(served):
    """500 addresses fail peer authentication 30 times (then get 429), 500 others fail
    API-key authentication 10 times (then 429): 1,000 distinct addresses in one window.
    Before the shared gate they added 1,600 rows (600 token rejections + one throttling
    notice per address); now at most 600, and the count of what was held back is
    reported by the next row written."""
    node, app, ticks = served
    db = getattr(node.settings, "database_url", None) or node.settings.db_path
    start = len(rows(db))

    async def storm() -> None:
        for i in range(500):
            assert await fail(app, addr(i), PULL, 31) == [401] * 30 + [429]
        for i in range(500, 1000):
            assert await fail(app, addr(i), PEERS, 11) == [401] * 10 + [429]

    asyncio.run(storm())
    added = rows(db)[start:]
    assert len(added) == GLOBAL
    kinds = {e["event_type"] for e in added}
    assert kinds <= {"token_rejected", "peer_auth_throttled"}
    # The API-key throttling notices came last and found the shared budget spent: none written.
    assert not [e for e in added if e["event_type"] == "apikey_auth_throttled"]
    assert len({e["remote_addr"] for e in added}) < 1000

    # Reaching the global budget: 500 x 20 token rows (the per-address budget held back the
    # other 10 of each address) + 500 peer and 500 API-key throttling notices.
    reached = 500 * 20 + 500 + 500
    ticks.now += 3600  # the next window
    assert asyncio.run(fail(app, addr(1000), PULL, 1)) == [401]
    (after,) = rows(db)[start + GLOBAL:]
    assert after["event_type"] == "token_rejected" and after["remote_addr"] == addr(1000)
    assert after["detail"]["suppressed_all_before"] == reached - GLOBAL
    assert "suppressed_before" not in after["detail"]


def test_api_key_throttling_notices_carry_the_counts_they_stand_for(served):
    """A throttling notice held back by the global budget is counted in the next row."""
    node, app, ticks = served
    db = getattr(node.settings, "database_url", None) or node.settings.db_path
    start = len(rows(db))
    for i in range(GLOBAL + 5):
        assert asyncio.run(fail(app, addr(i), PEERS, 10)) == [401] * 10
    added = rows(db)[start:]
    assert len(added) == GLOBAL and {e["event_type"] for e in added} == {"apikey_auth_throttled"}
    ticks.now += 3600
    assert asyncio.run(fail(app, addr(GLOBAL + 5), PEERS, 10)) == [401] * 10
    last = rows(db)[-1]
    assert last["event_type"] == "apikey_auth_throttled" and last["detail"]["suppressed_all_before"] == 5


def test_gate_reports_an_address_count_held_back_by_the_global_budget():
    ticks = Ticks()
    gate = UnauthenticatedAuditGate(per_address=2, global_per_window=3, window_s=60, clock=ticks)
    assert gate.admit("token", "a") == {}
    assert gate.admit("token", "a") == {}
    assert gate.admit("token", "a") is None  # per-address budget: counted for a
    assert gate.admit("throttle", "a") == {}  # another family has its own per-address budget
    assert gate.admit("token", "b") is None  # global budget spent: counted for everyone
    ticks.now += 60
    assert gate.admit("token", "b") == {"suppressed_all_before": 1}
    assert gate.admit("token", "a") == {"suppressed_before": 1}
    with pytest.raises(ValueError):
        gate.admit("other", "a")


def test_a_refused_key_refresh_caused_by_a_failing_token_shares_the_budget(tmp_path, engine):
    """A forged token naming an active peer makes the node re-read the peer's well-known; a
    refused (unendorsed) key change found that way is audited within the same budgets."""
    node = Node(engine.settings(tmp_path / "n.db"))
    fake = FakePeer().up()
    try:
        actor = Actor("cli:test", "local")
        peer = asyncio.run(node.federation.register(fake.declaration(), actor=actor))
        node.federation.approve(peer.id, fake.fingerprint, actor=actor)
        fake.key = Ed25519PrivateKey.generate()  # a new key with no endorsement chain
        fake.public_key = raw_public(fake.key)
        ticks = Ticks()
        gate = UnauthenticatedAuditGate(per_address=20, global_per_window=1, window_s=60, clock=ticks)
        assert gate.admit("token", "203.0.113.9") == {}  # the window's one row is spent
        db = getattr(node.settings, "database_url", None) or node.settings.db_path
        start = len(rows(db))
        refresh = node.federation.refresh_peer_keys
        active = node.store.peers.get(peer.id)
        assert asyncio.run(refresh(active, actor="node:auth", audit_gate=gate)) == "rotation_not_endorsed"
        assert rows(db)[start:] == []
        ticks.now += 60
        assert asyncio.run(refresh(active, actor="node:auth", audit_gate=gate)) == "rotation_not_endorsed"
        (row,) = rows(db)[start:]
        assert row["event_type"] == "peer_key_rotation_refused" and row["detail"]["suppressed_all_before"] == 1
        # Without a gate (the subscriber, the CLI), every refusal is written.
        assert asyncio.run(refresh(active, actor="node:pull")) == "rotation_not_endorsed"
        assert len(rows(db)[start:]) == 2
    finally:
        fake.down()
        node.close()
