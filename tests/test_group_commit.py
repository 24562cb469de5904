"""Group commit of nonce inserts: shared commits, exact replays, nothing answered early."""

from __future__ import annotations

import asyncio
import sqlite3

from stigmem_node.store import Store
from stigmem_node.store.db import GroupCommit


def committed_nonces(path) -> set[str]:
    with sqlite3.connect(path) as other:  # another connection sees only committed rows
        return {r[0] for r in other.execute("SELECT nonce FROM nonce_cache")}


def test_inserts_of_one_loop_turn_share_one_commit_and_replays_stay_exact(tmp_path):
    store = Store(tmp_path / "n.db")
    group = GroupCommit(store.db)

    async def main():
        futures = []
        for i in range(5):
            futures.append(group.join())
            assert store.nonces.consume(f"n{i}", "p", 10**13)
        assert len({id(f) for f in futures}) == 1  # one group
        assert group.join() is futures[0] and not store.nonces.consume("n0", "p", 10**13)  # replay seen
        assert committed_nonces(store.db.path) == set()  # nothing committed yet ...
        await futures[0]  # ... until the loop's next turn
        assert committed_nonces(store.db.path) == {f"n{i}" for i in range(5)}
        later = group.join()
        assert later is not futures[0]  # a new group after the commit
        store.nonces.consume("n5", "p", 10**13)
        await later
        assert "n5" in committed_nonces(store.db.path)

    asyncio.run(main())


def test_a_transaction_during_an_open_group_commits_the_group_first(tmp_path):
    store = Store(tmp_path / "n.db")
    group = GroupCommit(store.db)

    async def main():
        future = group.join()
        store.nonces.consume("early", "p", 10**13)
        with store.transaction():  # e.g. an audit row or a fact write on the same connection
            store.meta.set("k", "v")
        assert future.done() and "early" in committed_nonces(store.db.path)
        with sqlite3.connect(store.db.path) as other:
            assert other.execute("SELECT value FROM node_meta WHERE key = 'k'").fetchone() == ("v",)

    asyncio.run(main())
