"""Signed audit checkpoints and anchors (real databases on both engines, real node keys, the
real CLI).

A plain hash chain cannot tell a truncated or fully re-hashed trail from an honest one.
Checkpoints signed by the node key catch a re-hash made without that key; an anchor
kept off the host catches a truncation or rewrite after it was taken.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stigmem_node.audit import AUDIT_CHECKPOINT, checkpoint_payload
from stigmem_node.audit_anchor import ANCHOR_FIELDS, anchor_payload
from stigmem_node.clock import Clock
from stigmem_node.encoding import b64url_decode, b64url_encode, key_id
from stigmem_node.keys import public_key_from_b64
from stigmem_node.node import Node
from tests.audit_tools import cli_env, make_trail, read_rows, rehash, truncate, verify
from tests.engines import cli_kw, sql
from tests.nodes import run_cli

EVERY = 5


def anchor(db: Path | str, tmp_path: Path, name: str = "anchor.json") -> tuple[Path, dict]:
    out = tmp_path / name
    res = run_cli("audit", "anchor", "--out", str(out), **cli_kw(db), env=cli_env(EVERY))
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr
    return out, json.loads(out.read_text())


@pytest.fixture
def trail(tmp_path, engine) -> Path | str:
    """A node's database with 20 audit rows: its target (a SQLite path or a PostgreSQL URL)."""
    db = tmp_path / "node.db"
    make_trail(db, rows=20, every=EVERY, database_url=engine.url("node"))
    return engine.target(db)


# -- checkpoints ---------------------------------------------------------------------------
def test_every_n_rows_a_checkpoint_signed_by_the_node_key_seals_the_row_before_it(trail):
    rows = read_rows(trail)
    marks = [r for r in rows if r["event_type"] == AUDIT_CHECKPOINT]
    assert [r["seq"] for r in marks] == [6, 12, 18, 24]  # after every 5 ordinary rows
    ((node_id,),) = sql(trail, "SELECT value FROM node_meta WHERE key = 'node_id'")
    keys = dict(sql(trail, "SELECT key_id, public_key FROM node_keys"))
    prev_checkpoint = 0
    for r in marks:
        d = json.loads(r["detail"])
        assert r["actor"] == "node" and r["reason"] == "rows"
        assert (d["seq"], d["hash"], d["prev_checkpoint"], d["node_id"]) == (r["seq"] - 1, r["prev_hash"],
                                                                              prev_checkpoint, node_id)
        payload = checkpoint_payload(node_id=node_id, key_id=d["key_id"], seq=d["seq"], hash=d["hash"],
                                     prev_checkpoint=prev_checkpoint, ts=r["ts"])
        assert b'"type":"stigmem-audit-checkpoint"' in payload  # domain-separated
        public_key_from_b64(keys[d["key_id"]]).verify(b64url_decode(d["sig"]), payload)
        prev_checkpoint = r["seq"]
    code, report, human = verify(trail, every=EVERY)
    assert code == 0 and report["ok"] and report["checkpoints"] == 4 and report["rows"] == 24, report
    assert "intact" in human


def test_a_serving_node_seals_rows_that_waited_the_interval(start_node):
    node = start_node("a", env={"STIGMEM_AUDIT_CHECKPOINT_INTERVAL_S": "1"})
    # The first admin key's row exists; within about a second it is sealed.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        marks = [r for r in read_rows(node.target) if r["event_type"] == AUDIT_CHECKPOINT]
        if marks:
            break
        time.sleep(0.2)
    assert marks and marks[0]["reason"] == "time", "no time-based checkpoint was appended"
    assert json.loads(marks[0]["detail"])["seq"] == marks[0]["seq"] - 1
    res = node.cli("audit", "verify", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["checkpoints"] >= 1, res.stdout


def test_checkpoint_if_due_waits_for_the_oldest_unsealed_row(tmp_path, engine):
    clock = Clock()
    node = Node(engine.settings(tmp_path / "n.db"), clock=clock)
    try:
        assert node.audit.checkpoint_if_due(3600) is None  # nothing to seal
        node.first_admin_key()
        assert node.audit.checkpoint_if_due(3600) is None  # younger than the interval
        clock.offset_s += 3601
        seq = node.audit.checkpoint_if_due(3600)
        assert seq == 2 and read_rows(engine.target(tmp_path / "n.db"))[-1]["reason"] == "time"
        assert node.audit.checkpoint_if_due(3600) is None  # the newest row is a checkpoint
        assert node.audit.verify().ok
    finally:
        node.close()


# -- re-hashing -----------------------------------------------------------------------------
def _forge_actor(row: dict) -> None:
    if row["seq"] == 3:
        row["actor"] = "cli:mallory"


def test_a_full_rehash_without_the_key_is_detected_by_the_checkpoints(trail):
    rehash(trail, edit=_forge_actor)
    code, report, human = verify(trail, every=EVERY)
    assert code == 1 and report["first_bad_seq"] == 6, report  # the first checkpoint after the edit
    assert "re-hashed" in report["problem"] and "BROKEN at row 6" in human


def test_a_rehash_that_also_rewrites_the_checkpoints_fails_their_signatures(trail):
    rehash(trail, edit=_forge_actor, patch_checkpoints=True)
    code, report, _ = verify(trail, every=EVERY)
    assert code == 1 and report["first_bad_seq"] == 6, report
    assert "signature does not verify" in report["problem"]


def test_a_rehash_that_drops_the_checkpoints_leaves_too_many_rows_unsealed(trail):
    rows = rehash(trail, edit=_forge_actor, drop_checkpoints=True)
    assert len(rows) == 20 and not [r for r in rows if r["event_type"] == AUDIT_CHECKPOINT]
    code, report, _ = verify(trail, every=EVERY)
    assert code == 1 and report["first_bad_seq"] == EVERY + 1, report
    assert "not sealed by a signed checkpoint" in report["problem"]


# -- anchors --------------------------------------------------------------------------------
def test_an_anchor_is_the_signed_head_and_an_intact_trail_holds_it(trail, tmp_path, engine):
    path, doc = anchor(trail, tmp_path)
    head = read_rows(trail)[-1]
    assert set(doc) == set(ANCHOR_FIELDS)
    assert (doc["seq"], doc["hash"], doc["type"]) == (head["seq"], head["hash"], "stigmem-audit-anchor")
    public_key_from_b64(doc["public_key"]).verify(b64url_decode(doc["sig"]), anchor_payload(doc))
    printed = run_cli("audit", "anchor", "--out", "-", **cli_kw(trail))
    assert printed.returncode == 0 and json.loads(printed.stdout)["seq"] == head["seq"]
    code, report, human = verify(trail, "--anchor", str(path), every=EVERY)
    assert code == 0 and report["anchor"]["seq"] == head["seq"], report
    assert "still holds the anchor" in human
    # More rows after the anchor: it still holds.
    make_more = Node(engine.settings(tmp_path / "node.db", audit_checkpoint_rows=EVERY))
    make_more.audit.record("apikey_revoked", actor="cli:test", detail={"id": "later"})
    make_more.close()
    assert verify(trail, "--anchor", str(path), every=EVERY)[0] == 0


def test_truncating_the_newest_rows_after_an_anchor_is_detected(trail, tmp_path):
    path, doc = anchor(trail, tmp_path)
    truncate(trail, doc["seq"] - 2)  # and the sequence lowered: nothing else shows it
    assert verify(trail, every=EVERY)[0] == 0  # the chain alone cannot tell
    code, report, human = verify(trail, "--anchor", str(path), every=EVERY)
    assert code == 1 and report["first_bad_seq"] == doc["seq"], report
    assert "no longer holds row" in report["problem"] and "deleted" in report["problem"]
    assert f"BROKEN at row {doc['seq']}" in human


def test_a_full_rehash_is_detected_by_the_anchor(tmp_path, engine):
    """Fewer rows than one checkpoint interval: no checkpoint can help, the anchor does."""
    make_trail(tmp_path / "node.db", rows=20, every=1000, database_url=engine.url("node"))
    db = engine.target(tmp_path / "node.db")
    path, doc = anchor(db, tmp_path)
    rehash(db, edit=_forge_actor)
    assert verify(db, every=1000)[0] == 0  # the chain alone cannot tell
    code, report, human = verify(db, "--anchor", str(path), every=1000)
    assert code == 1 and report["first_bad_seq"] == doc["seq"] == 20, report
    assert "no longer has the hash" in report["problem"] and "re-hashed" in report["problem"]
    assert "BROKEN at row 20" in human


def test_a_rehash_that_drops_the_checkpoints_is_detected_by_the_anchor(trail, tmp_path):
    path, doc = anchor(trail, tmp_path)
    rehash(trail, edit=_forge_actor, drop_checkpoints=True)
    code, report, _ = verify(trail, "--anchor", str(path), every=100)  # even with a lax interval
    assert code == 1 and report["first_bad_seq"] == doc["seq"], report
    assert "no longer holds row" in report["problem"]


def test_checkpoints_and_anchors_survive_key_rotations(tmp_path, engine):
    path = tmp_path / "node.db"
    db = engine.target(path)
    env = cli_env(3)
    assert engine.cli("init", db=path, env=env).returncode == 0
    for _ in range(4):
        assert engine.cli("apikey", "create", "--permissions", "facts:read", db=path, env=env).returncode == 0
    old_anchor, _ = anchor(db, tmp_path, "before.json")
    # First rotation with a grace of about a second, then a second rotation once it has
    # passed: the first key is then 'retired', and its checkpoints and anchor must still verify.
    assert engine.cli("keys", "rotate", "--grace", "0.0003", db=path, env=env).returncode == 0
    for _ in range(3):
        assert engine.cli("apikey", "create", "--permissions", "facts:read", db=path, env=env).returncode == 0
    time.sleep(1.2)
    assert engine.cli("keys", "rotate", "--grace", "1", db=path, env=env).returncode == 0
    for _ in range(3):
        assert engine.cli("apikey", "create", "--permissions", "facts:read", db=path, env=env).returncode == 0
    statuses = [s for (s,) in sql(db, "SELECT status FROM node_keys ORDER BY created_at")]
    assert statuses == ["retired", "retiring", "active"]
    signers = {json.loads(r["detail"])["key_id"] for r in read_rows(db) if r["event_type"] == AUDIT_CHECKPOINT}
    assert len(signers) == 3  # checkpoints by every key the node had
    code, report, _ = verify(db, "--anchor", str(old_anchor), every=3)
    assert code == 0 and report["checkpoints"] >= 4, report
    new_anchor, doc = anchor(db, tmp_path, "after.json")
    assert verify(db, "--anchor", str(new_anchor), every=3)[0] == 0


def _resign(doc: dict, key: Ed25519PrivateKey) -> dict:
    doc = dict(doc)
    doc["sig"] = b64url_encode(key.sign(anchor_payload(doc)))
    return doc


def test_a_forged_or_foreign_anchor_is_refused(trail, tmp_path):
    path, doc = anchor(trail, tmp_path)
    stranger = Ed25519PrivateKey.generate()
    raw = stranger.public_key().public_bytes_raw()
    cases = {
        "altered": ({**doc, "seq": doc["seq"] - 1}, "signature does not verify"),
        "altered hash": ({**doc, "hash": "0" * 64}, "signature does not verify"),
        "bad sig": ({**doc, "sig": "AAAA"}, "signature does not verify"),
        "foreign key": (_resign({**doc, "public_key": b64url_encode(raw), "key_id": key_id(raw)}, stranger),
                        "not one of this node's keys"),
        "same key id, other key": (_resign({**doc, "public_key": b64url_encode(raw)}, stranger),
                                   "not one of this node's keys"),
        "other node": ({**doc, "node_id": "stigmem:node:someone-else"}, "is for node"),
        "not an anchor": ({**doc, "type": "stigmem-audit-checkpoint"}, "not an audit anchor"),
        "missing field": ({k: v for k, v in doc.items() if k != "time"}, "exactly the fields"),
        "wrong type": ({**doc, "seq": str(doc["seq"])}, "seq is a str"),
        "boolean seq": ({**doc, "seq": True}, "seq is a boolean"),
    }
    for name, (forged, needle) in cases.items():
        path.write_text(json.dumps(forged))
        code, report, human = verify(trail, "--anchor", str(path), every=EVERY)
        assert code == 1 and not report["ok"] and needle in report["problem"], (name, report)
        assert report["problem"].startswith("anchor refused") and "NOT verified" in human, (name, human)
    path.write_text("{not json")
    code, report, _ = verify(trail, "--anchor", str(path), every=EVERY)
    assert code == 1 and "not JSON" in report["problem"]
    missing = run_cli("audit", "verify", "--anchor", str(tmp_path / "nowhere.json"), **cli_kw(trail))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "cannot read the anchor file" in missing.stderr and "Traceback" not in missing.stderr


def test_anchor_out_into_a_missing_folder_is_one_line_exit_2(trail, tmp_path):
    res = run_cli("audit", "anchor", "--out", str(tmp_path / "no" / "such" / "a.json"), **cli_kw(trail))
    assert res.returncode == 2 and "cannot write the anchor" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
