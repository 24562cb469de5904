"""Group commit of nonces, off the event loop: concurrent requests share commits, replays
stay exact, and nothing is answered before its nonce is committed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stigmem_node.offload import Lanes
from stigmem_node.peer_auth import NonceBatcher
from stigmem_node.store import Store
from tests.test_pull import PULL, Fed, _federation, nonce_row

FAR = 10**13


@pytest.fixture
def fed(start_node) -> Iterator[Fed]:
    """Node A (served in this process: its counters are readable) and two approved peers."""
    yield from _federation(start_node("a"), start_node)


def committed_nonces(path: Path) -> set[str]:
    with sqlite3.connect(path) as other:  # another connection sees only committed rows
        return {r[0] for r in other.execute("SELECT nonce FROM nonce_cache")}


class Watched:
    """``store.nonces`` that records, at each batch, what another connection saw committed
    before it (so: what was durable when the previous batch's requests were answered)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[list[str]] = []

    def consume_batch(self, items: list[tuple[str, str, int]]) -> list[bool]:
        self.batches.append([n for n, _, _ in items])
        return self.store.nonces.consume_batch(items)


def test_concurrent_nonces_share_few_commits_and_each_answer_waits_for_its_commit(tmp_path: Path):
    store = Store(tmp_path / "n.db")
    watched = Watched(store)
    batcher = NonceBatcher(watched, Lanes())

    async def main() -> None:
        async def one(i: int) -> tuple[bool, bool]:
            fresh = await batcher.consume(f"n{i}", "p", FAR)
            # When the answer arrives, the nonce is committed (another connection sees it).
            durable = await asyncio.to_thread(lambda: f"n{i}" in committed_nonces(store.db.path))
            return fresh, durable

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert all(fresh and durable for fresh, durable in results)

    try:
        asyncio.run(main())
        assert batcher.consumed == 200 and sum(len(b) for b in watched.batches) == 200
        assert batcher.commits == len(watched.batches) < 200 / 4, watched.batches  # shared commits
        assert committed_nonces(store.db.path) == {f"n{i}" for i in range(200)}
    finally:
        store.close()


def test_replays_stay_exact_within_a_batch_and_across_batches(tmp_path: Path):
    store = Store(tmp_path / "n.db")
    batcher = NonceBatcher(store.nonces, Lanes())

    async def main() -> None:
        same = await asyncio.gather(*(batcher.consume("dup", "p", FAR) for _ in range(50)))
        assert sorted(same) == [False] * 49 + [True]  # one batch: exactly one wins
        again = await asyncio.gather(*(batcher.consume(n, "p", FAR) for n in ["dup", "new", "new"]))
        assert again == [False, True, False]

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_many_concurrent_pulls_share_fewer_commits_than_requests(fed: Fed):
    """Real pulls on a served node: 40 concurrent requests with fresh tokens all succeed,
    each nonce is durable, and they took fewer commits than requests."""
    node = fed.a.node  # a node served in this process: its counters are readable
    before_commits, before_consumed = node.peer_auth.nonces.commits, node.peer_auth.nonces.consumed
    nonces = [str(uuid.uuid4()) for _ in range(40)]
    tokens = [fed.mint(PULL, nonce=n) for n in nonces]
    barrier = threading.Barrier(len(tokens))

    def go(token: str) -> int:
        with httpx.Client(base_url=fed.a.url, timeout=30) as client:
            barrier.wait(timeout=10)
            return client.get(PULL, headers={"Authorization": f"Bearer {token}"}).status_code

    with ThreadPoolExecutor(len(tokens)) as pool:
        statuses = list(pool.map(go, tokens))
    assert statuses == [200] * len(tokens)
    assert all(nonce_row(fed.a.target, n) is not None for n in nonces)
    consumed = node.peer_auth.nonces.consumed - before_consumed
    commits = node.peer_auth.nonces.commits - before_commits
    assert consumed == len(tokens) and commits < consumed, (commits, consumed)


def test_a_batch_is_exact_on_every_engine(tmp_path: Path, engine) -> None:
    """One batch (one multi-row INSERT on PostgreSQL, one INSERT a nonce on SQLite): a nonce
    named twice is fresh once, at its first place; a stored one is a replay; order is kept."""
    store = engine.store(tmp_path / "n.db")
    try:
        assert store.nonces.consume("old", "p", FAR) is True
        batch = [("dup", "p", FAR), ("new", "q", FAR), ("dup", "p", FAR), ("old", "p", FAR), ("new", "q", FAR),
                 ("last", "p", FAR)]
        assert store.nonces.consume_batch(batch) == [True, True, False, False, False, True]
        assert store.nonces.consume_batch(batch) == [False] * len(batch)
        assert store.nonces.consume_batch([("solo", "p", FAR)]) == [True]
        assert store.nonces.count() == 5
    finally:
        store.close()
