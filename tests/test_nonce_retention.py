"""A consumed nonce outlives every leeway any process may run with (invariant 4, issue 8.4).

Nonces used to be kept until ``exp`` + the accepting process's own leeway, so a second
process on the same database with a larger leeway (or the same node restarted with one)
accepted a token again once the first had pruned its nonce.  These tests run real nodes
on one real database (either engine), a real peer key and the real pruning query, with a
clock that the test moves forward.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node import tokens
from stigmem_node.clock import Clock
from stigmem_node.config import Settings
from stigmem_node.node import Node
from stigmem_node.store.db import SCHEMA_VERSION, schema_text, split_sql
from stigmem_node.store.peers import PeerKey, PeerRecord
from tests.engines import Engine
from tests.fakepeer import raw_public

PEER_NODE_ID = "stigmem:node:replayer"


def open_node(db: Path, leeway_s: int, clock: Clock, engine: Engine | None = None) -> Node:
    settings = engine.settings(db, clock_leeway_s=leeway_s) if engine else Settings(db_path=db, clock_leeway_s=leeway_s)
    return Node(settings, clock=clock, serving=True)


def add_active_peer(node: Node, key: Ed25519PrivateKey) -> None:
    now = node.clock.now_iso()
    record = PeerRecord(str(uuid.uuid4()), PEER_NODE_ID, "http://127.0.0.1:9", raw_public(key), ("public",), {},
                        now, "active", None, now, now, "test", now)
    node.store.peers.insert(record, [PeerKey("k1", raw_public(key), now, None)])


def present(node: Node, token: str) -> str:
    """``ok`` or the rejection code of one presentation of ``token`` to ``node``."""
    try:
        asyncio.run(node.peer_auth.authenticate(f"Bearer {token}", method=None, path_qs=None, remote_addr="127.0.0.9"))
    except tokens.TokenRejected as exc:
        return exc.code
    return "ok"


def mint(node: Node, key: Ed25519PrivateKey) -> tuple[str, int]:
    now = node.clock.now_ms()
    token = tokens.mint(issuer=PEER_NODE_ID, audience=node.identity.node_id, private_key=key, key_id="k1",
                        scopes=["public"], now_ms=now, ttl_ms=60_000)
    return token, now + 60_000


def prune_at(node: Node, now_ms: int) -> int:
    """What the maintenance thread does once a second."""
    return node.store.nonces.prune(now_ms)


def test_inv4_two_processes_with_different_leeways_never_accept_a_token_twice(tmp_path: Path, engine):
    clock = Clock()
    strict = open_node(tmp_path / "n.db", 30, clock, engine)
    lenient = open_node(tmp_path / "n.db", 600, clock, engine)
    key = Ed25519PrivateKey.generate()
    add_active_peer(strict, key)

    token, exp = mint(strict, key)
    assert present(strict, token) == "ok"
    # 36 s after exp: the strict process has long stopped accepting the token and prunes;
    # the lenient one (600 s leeway) would still accept it if its nonce were gone.
    clock.offset_s = (exp + 36_000 - clock.now_ms()) / 1000
    prune_at(strict, clock.now_ms())
    assert present(lenient, token) == "nonce_already_seen"
    # Up to the very end of the lenient process's window, and the prunes on the way.
    clock.offset_s += 560
    prune_at(strict, clock.now_ms())
    assert present(lenient, token) == "nonce_already_seen"
    clock.offset_s += 10
    assert present(lenient, token) == "token_expired"
    strict.close()
    lenient.close()


def test_inv4_a_restart_with_a_larger_leeway_does_not_reopen_a_window(tmp_path: Path, engine):
    clock = Clock()
    first = open_node(tmp_path / "n.db", 0, clock, engine)
    key = Ed25519PrivateKey.generate()
    add_active_peer(first, key)
    token, exp = mint(first, key)
    assert present(first, token) == "ok"
    clock.offset_s = (exp + 1_000 - clock.now_ms()) / 1000
    prune_at(first, clock.now_ms())
    first.close()

    restarted = open_node(tmp_path / "n.db", 600, clock, engine)
    prune_at(restarted, clock.now_ms())
    assert present(restarted, token) == "nonce_already_seen"
    restarted.close()


def test_nonces_are_kept_beyond_the_largest_leeway_a_node_accepts(tmp_path: Path):
    from stigmem_node.config import from_env
    from stigmem_node.errors import ConfigError

    assert from_env({"STIGMEM_PEER_TOKEN_LEEWAY_S": str(tokens.MAX_LEEWAY_MS // 1000)}).clock_leeway_s == 600
    with pytest.raises(ConfigError):
        from_env({"STIGMEM_PEER_TOKEN_LEEWAY_S": str(tokens.MAX_LEEWAY_MS // 1000 + 1)})
    assert tokens.nonce_kept_until(1_000) > 1_000 + tokens.MAX_LEEWAY_MS


@pytest.mark.sqlite_only  # a SQLite file of schema version 1 (PostgreSQL starts at a later version)
def test_migration_2_extends_nonces_stored_under_the_old_rule(tmp_path: Path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in split_sql(schema_text(), sqlite3.complete_statement):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO nonce_cache VALUES ('n1', 'p', 1000)")
    conn.commit()
    conn.close()

    node = open_node(db, 30, Clock())
    node.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        (kept,) = conn.execute("SELECT expires_at_ms FROM nonce_cache WHERE nonce = 'n1'").fetchone()
    finally:
        conn.close()
    assert kept == 1000 + tokens.MAX_LEEWAY_MS + tokens.NONCE_PRUNE_MARGIN_MS
