"""Background upkeep: expired nonces are pruned off the event loop."""

from __future__ import annotations

import time

from stigmem_node.background import Maintenance


def test_expired_nonces_are_pruned_in_the_background_and_live_ones_kept(tmp_path, engine):
    store = engine.store(tmp_path / "n.db")
    now = 10_000_000
    for i in range(300):
        store.nonces.consume(f"old-{i}", "p", now - 1)
    for i in range(5):
        store.nonces.consume(f"live-{i}", "p", now + 60_000)
    maintenance = Maintenance(store.db, lambda: now, interval_s=0.05, prune_batch=100)
    try:
        deadline = time.monotonic() + 10
        while store.nonces.count() > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        maintenance.stop()
    assert store.nonces.count() == 5
    # A live nonce is still a replay.
    assert store.nonces.consume("live-0", "p", now + 60_000) is False
