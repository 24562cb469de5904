"""`stigmem-node backup FILE`: an online copy of a SQLite node taken while it serves and takes
writes; a node restored from it (with the pepper) is the same node, with its peers, facts, audit
chain and nonce cache (no replay window).  On PostgreSQL the command refuses and names pg_dump."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import httpx
import pytest

from tests.nodes import ServedNode, run_cli, stop_all

PULL = "/v1/federation/facts?limit=5"


def federate(a: ServedNode, b: ServedNode) -> None:
    for host, wk in ((a, b.well_known()), (b, a.well_known())):
        with host.client() as c:
            rec = c.post("/v1/federation/peers", json=wk["declaration"])
            assert rec.status_code == 201, rec.text
            ok = c.post(f"/v1/federation/peers/{rec.json()['peer_id']}/approve",
                        json={"pubkey_fingerprint": wk["pubkey_fingerprint"]})
            assert ok.status_code == 200, ok.text


def fact(i: int) -> dict:
    return {"entity": f"backup:{i}", "relation": "test:rel", "value": {"type": "string", "v": f"v{i}"},
            "source": "test_backup", "scope": "company"}


class Writer(threading.Thread):
    """Posts ``count`` facts one request at a time; ``acked`` holds the ids the node confirmed."""

    def __init__(self, node: ServedNode, count: int) -> None:
        super().__init__(daemon=True)
        self.node, self.count = node, count
        self.acked: list[str] = []
        self.started_ten = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.node.client() as c:
                for i in range(self.count):
                    res = c.post("/v1/facts", json=fact(i))
                    assert res.status_code == 201, res.text
                    self.acked.append(res.json()["id"])
                    if len(self.acked) >= 10:
                        self.started_ten.set()
        except BaseException as exc:  # raised again in the test
            self.error = exc
            self.started_ten.set()


def audit_rows(target: Path | str, upto: int | None = None) -> list[tuple]:
    from tests.engines import sql

    rows = sql(target, "SELECT seq, ts, event_type, hash, prev_hash FROM audit_log ORDER BY seq")
    return [r for r in rows if upto is None or r[0] <= upto]


@pytest.mark.sqlite_only
def test_backup_during_writes_restores_the_same_node_and_its_nonces(start_node, tmp_path):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    wk = a.well_known()
    # A token b used on a before the backup: its nonce is in a's cache.
    token = b.node.mint_peer_token(wk["node_id"], ["company", "public"], method="GET", path_qs=PULL)
    with httpx.Client(base_url=a.url, timeout=10) as c:
        assert c.get(PULL, headers={"Authorization": f"Bearer {token}"}).status_code == 200

    writer = Writer(a, 150)
    writer.start()
    assert writer.started_ten.wait(60) and writer.error is None
    committed_before = list(writer.acked)
    copy = tmp_path / "backups" / "a-copy.db"
    copy.parent.mkdir()
    res = a.cli("backup", str(copy), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["file"] == str(copy) and report["bytes"] == copy.stat().st_size > 0
    assert report["pepper"] == str(a.db) + ".pepper"
    writer.join(120)
    assert writer.error is None and len(writer.acked) == 150
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert [p.name for p in copy.parent.iterdir()] == ["a-copy.db"]  # no temporary file or -wal left

    # The copy opens and its audit chain verifies.
    verified = run_cli("audit", "verify", "--json", db=copy)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True

    # Restore: the copy and the pepper, side by side under the same name; the original stops.
    shutil.copy2(str(a.db) + ".pepper", str(copy) + ".pepper")
    original_rows = audit_rows(a.db)
    original_peers = a.sql("SELECT id, node_id, status, federation_pubkey FROM peers ORDER BY id")
    original_keys = a.sql("SELECT key_id, public_key, status FROM node_keys ORDER BY key_id")
    stop_all([a], wait=True)
    restored = ServedNode(tmp_path / "restored", "restored", db=copy)
    try:
        rwk = restored.well_known()
        for field in ("node_id", "key_id", "federation_pubkey", "pubkey_fingerprint"):
            assert rwk[field] == wk[field], field
        assert restored.sql("SELECT id, node_id, status, federation_pubkey FROM peers ORDER BY id") == original_peers
        assert restored.sql("SELECT key_id, public_key, status FROM node_keys ORDER BY key_id") == original_keys
        stored = {r[0] for r in restored.sql("SELECT id FROM facts")}
        assert set(committed_before) <= stored  # every fact committed before the backup began
        assert stored <= set(writer.acked)  # and nothing that was never committed
        # The audit chain is the original's, up to the moment of the copy.
        copied = audit_rows(copy)
        assert copied and copied == original_rows[:len(copied)]
        # The API keys work with the restored pepper.
        with restored.client(a.api_key) as c:
            assert c.get("/v1/federation/peers").status_code == 200
        # No replay window: the token accepted before the backup is refused by the restored node.
        with httpx.Client(base_url=restored.url, timeout=10) as c:
            replay = c.get(PULL, headers={"Authorization": f"Bearer {token}"})
        assert replay.status_code == 401 and replay.json()["error"] == "nonce_already_seen", replay.text
    finally:
        stop_all([restored], wait=True)


@pytest.mark.sqlite_only
def test_backup_refuses_to_overwrite_a_missing_directory_or_the_database_itself(node, tmp_path):
    target = tmp_path / "copy.db"
    target.write_text("keep me")
    res = node.cli("backup", str(target))
    assert res.returncode == 2 and "already exists" in res.stderr and "--force" in res.stderr, res.stderr
    assert target.read_text() == "keep me"

    res = node.cli("backup", str(target), "--force")
    assert res.returncode == 0, res.stderr
    assert "pepper" in res.stdout and str(node.db) + ".pepper" in res.stdout  # the reminder
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert run_cli("info", "--json", db=target).returncode == 0

    for bad, words in ((tmp_path / "nowhere" / "copy.db", "does not exist"), (node.db, "own database")):
        res = node.cli("backup", str(bad))
        assert res.returncode == 2 and words in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "nowhere").exists()
    assert node.cli("audit", "verify").returncode == 0  # the database is untouched

    os.chmod(tmp_path, 0o500)  # a directory the copy cannot be written in
    try:
        res = node.cli("backup", str(tmp_path / "other.db"))
    finally:
        os.chmod(tmp_path, 0o700)
    if os.geteuid() != 0:  # root writes anywhere
        assert res.returncode == 2 and "cannot write" in res.stderr, res.stderr


@pytest.mark.postgres_only
def test_backup_on_postgresql_refuses_and_names_pg_dump(node, tmp_path):
    res = node.cli("backup", str(tmp_path / "copy.db"))
    assert res.returncode == 2 and "pg_dump" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "copy.db").exists()
    res = node.cli("backup", str(tmp_path / "copy.db"), "--json")
    assert res.returncode == 2
