"""The audit trail (design §6, invariants 10 and 11), driven by real actions on real nodes.

Each test gets a pair of nodes (served in process): node A registers node B (a real
signed declaration, a real well-known fetch), the operator approves, suspends and resumes
it, API keys are made and revoked with the CLI, and one loopback address trips the failed
authentication limit.  Tampering is done with SQL on a snapshot of A's database (on
PostgreSQL, on A's database itself).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from stigmem_node.audit import GENESIS, row_hash
from tests.engines import cli_kw, connect
from tests.nodes import ServedNode, node_env, run_cli

AUDIT = "/v1/federation/audit"
PEERS = "/v1/federation/peers"
THROTTLED_ADDR = "127.0.0.2"


class Fed:
    def __init__(self, a: ServedNode, b: ServedNode, peer_id: str, b_node_id: str, reader: str, no_audit: str):
        self.a, self.b = a, b
        self.peer_id, self.b_node_id = peer_id, b_node_id
        self.reader, self.no_audit = reader, no_audit
        self.suspended = False

    def client(self, key: str | None = None) -> httpx.Client:
        return self.a.client(key)

    def audit(self, **params: Any) -> httpx.Response:
        with self.client(self.reader) as c:
            return c.get(AUDIT, params=params)

    def all_entries(self) -> list[dict]:
        r = self.audit(limit=500)
        assert r.status_code == 200, r.text
        assert not r.json()["has_more"]
        return r.json()["entries"]

    def append_row(self) -> None:
        """One real, audited operator action: suspend peer B, or resume it if suspended."""
        action = "resume" if self.suspended else "suspend"
        with self.client() as c:
            r = c.post(f"{PEERS}/{self.peer_id}/{action}", json={"reason": "pagination test"})
        assert r.status_code == 200, r.text
        self.suspended = not self.suspended


def _key(node: ServedNode, perms: str) -> str:
    return node.cli_json("apikey", "create", "--permissions", perms)["key"]


@pytest.fixture
def fed(start_node) -> Fed:
    a = start_node("a")
    b = start_node("b")
    reader = _key(a, "audit:read")
    no_audit = _key(a, "federate,admin:federation")
    spare = a.cli_json("apikey", "create", "--permissions", "federate")
    assert a.cli("apikey", "revoke", spare["id"]).returncode == 0

    decl = b.well_known()["declaration"]
    with a.client() as c:
        reg = c.post(PEERS, json=decl)
        assert reg.status_code == 201, reg.text
        peer = reg.json()
        assert peer["status"] == "pending_approval"
        wrong = c.post(f"{PEERS}/{peer['peer_id']}/approve", json={"pubkey_fingerprint": "sha256:" + "0" * 64})
        assert wrong.status_code == 400 and wrong.json()["error"] == "fingerprint_mismatch", wrong.text
        ok = c.post(f"{PEERS}/{peer['peer_id']}/approve", json={"pubkey_fingerprint": peer["pubkey_fingerprint"]})
        assert ok.status_code == 200 and ok.json()["status"] == "active", ok.text
        assert c.post(f"{PEERS}/{decl['node_id']}/suspend", json={"reason": "maintenance"}).status_code == 200
        assert c.post(f"{PEERS}/{decl['node_id']}/resume").status_code == 200
        assert c.post(PEERS, json={"node_id": "x"}).status_code == 422

    # Trip the failed-attempt limit from another loopback address, so that 127.0.0.1
    # (every other request of this module) stays usable.
    with httpx.Client(base_url=a.url, transport=httpx.HTTPTransport(local_address=THROTTLED_ADDR),
                      timeout=10) as bad:
        codes = [bad.get(AUDIT, headers={"Authorization": f"Bearer wrong-{i}"}).status_code for i in range(11)]
    assert codes == [401] * 10 + [429]

    return Fed(a, b, peer["peer_id"], decl["node_id"], reader, no_audit)


def snapshot(fed: Fed, dest: Path) -> Path | str:
    """A consistent copy of A's database (SQLite online backup), to tamper with; on
    PostgreSQL, A's database itself (the test does not ask A for anything afterwards)."""
    if fed.a.database_url:
        return fed.a.database_url
    src = sqlite3.connect(fed.a.db, timeout=10)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return dest


def tamper(db: Path | str, statement: str, params: tuple = ()) -> None:
    with connect(db) as conn:
        conn.execute(statement, params)
        assert conn.rowcount == 1, statement


def verify(db: Path | str, *, human: bool = False) -> tuple[int, dict, str]:
    """`stigmem-node audit verify --json` on ``db`` (and the human form too, if asked)."""
    res = run_cli("audit", "verify", "--json", **cli_kw(db))
    assert "Traceback" not in res.stderr
    text = ""
    if human:
        plain = run_cli("audit", "verify", **cli_kw(db))
        assert plain.returncode == res.returncode and "Traceback" not in plain.stderr
        text = plain.stdout
    return res.returncode, json.loads(res.stdout), text


def row_count(db: Path | str) -> int:
    with connect(db) as conn:
        return conn.execute("SELECT MAX(seq) FROM audit_log")[0][0]


# -- the chain --------------------------------------------------------------------------------
def test_inv11_chain_verifies_after_real_actions(fed, tmp_path):
    res = fed.a.cli("audit", "verify", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report == {"ok": True, "rows": len(fed.all_entries()), "first_bad_seq": None, "problem": None,
                      "checkpoints": 0, "anchor": None}
    human = fed.a.cli("audit", "verify")
    assert human.returncode == 0 and "intact" in human.stdout
    # A snapshot (what the tamper tests start from) verifies too.
    assert verify(snapshot(fed, tmp_path / "copy.db"))[0] == 0


def test_inv10_real_actions_are_audited_with_peer_reason_actor_and_time(fed):
    entries = fed.all_entries()
    events = [e["event_type"] for e in entries]
    for event in ("apikey_created", "apikey_revoked", "peer_registered", "peer_approval_failed", "peer_approved",
                  "peer_suspended", "peer_resumed", "peer_registration_rejected", "apikey_auth_throttled"):
        assert event in events, event
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    by_type: dict[str, dict] = {}
    for e in entries:
        by_type.setdefault(e["event_type"], e)
    failed = by_type["peer_approval_failed"]
    assert failed["peer_id"] == fed.peer_id and failed["reason"] == "fingerprint_mismatch"
    assert failed["actor"].startswith("apikey:") and failed["remote_addr"] == "127.0.0.1" and failed["ts"]
    assert by_type["peer_suspended"]["reason"] == "maintenance"
    assert by_type["peer_registered"]["detail"]["node_id"] == fed.b_node_id
    throttled = by_type["apikey_auth_throttled"]
    assert throttled["remote_addr"] == THROTTLED_ADDR and throttled["actor"] == "anonymous"
    assert events.count("apikey_auth_throttled") == 1
    first_key, created = [e for e in entries if e["event_type"] == "apikey_created"][:2]
    assert first_key["actor"] == "node:first-start" and first_key["detail"]["label"] == "first admin key"
    assert created["actor"].startswith("cli:") and created["remote_addr"] == "local"


def test_inv11_chain_stays_valid_with_concurrent_writers_in_several_processes(fed):
    before = len(fed.all_entries())
    cmd = [sys.executable, "-m", "stigmem_node", "apikey", "create", "--permissions", "facts:read", "--db", str(fed.a.db),
           *(["--database-url", fed.a.database_url] if fed.a.database_url else [])]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=node_env())
             for _ in range(4)]
    try:
        for _ in range(8):  # the server appends while the CLI processes do
            fed.append_row()
    finally:
        errors = [p.communicate(timeout=30)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    entries = fed.all_entries()
    assert len(entries) == before + 12
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    res = fed.a.cli("audit", "verify", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["rows"] == len(entries), res.stdout


def _column_edit(column: str) -> str:
    if column == "seq":
        return "UPDATE audit_log SET seq = seq + 100000 WHERE seq = ?"
    if column == "detail":
        return "UPDATE audit_log SET detail = '{\"forged\":true}' WHERE seq = ?"
    return f"UPDATE audit_log SET {column} = COALESCE({column}, '') || 'x' WHERE seq = ?"


@pytest.mark.parametrize("column", ["seq", "ts", "event_type", "peer_id", "actor", "reason", "detail",
                                    "remote_addr", "prev_hash", "hash"])
def test_inv11_editing_any_column_of_a_middle_row_is_detected(fed, tmp_path, column):
    db = snapshot(fed, tmp_path / "copy.db")
    middle = row_count(db) // 2
    tamper(db, _column_edit(column), (middle,))
    code, report, _ = verify(db)
    assert code == 1
    assert report["ok"] is False and report["first_bad_seq"] == middle, report


def test_inv11_rewriting_a_row_with_a_recomputed_hash_breaks_the_next_link(fed, tmp_path):
    db = snapshot(fed, tmp_path / "copy.db")
    middle = row_count(db) // 2
    with connect(db) as conn:
        ((ts, event_type, peer_id, actor, reason, detail, addr, prev),) = conn.execute(
            "SELECT ts, event_type, peer_id, actor, reason, detail, remote_addr, prev_hash FROM audit_log WHERE seq = ?",
            (middle,))
        forged = row_hash(prev, ts, event_type, peer_id, "cli:mallory", reason, detail, addr)
        conn.execute("UPDATE audit_log SET actor = 'cli:mallory', hash = ? WHERE seq = ?", (forged, middle))
    code, report, _ = verify(db)
    assert code == 1 and report["first_bad_seq"] == middle + 1, report


def test_inv11_deleting_a_middle_row_is_detected(fed, tmp_path):
    db = snapshot(fed, tmp_path / "copy.db")
    middle = row_count(db) // 2
    tamper(db, "DELETE FROM audit_log WHERE seq = ?", (middle,))
    code, report, human = verify(db, human=True)
    assert code == 1 and report["first_bad_seq"] == middle, report
    assert f"BROKEN at row {middle}" in human and "missing" in human


def test_inv11_deleting_last_audit_row_is_detected(fed, tmp_path):
    db = snapshot(fed, tmp_path / "copy.db")
    last = row_count(db)
    tamper(db, "DELETE FROM audit_log WHERE seq = ?", (last,))
    code, report, human = verify(db, human=True)
    assert code == 1 and report["first_bad_seq"] == last, report
    assert str(last) in human and "BROKEN" in human


def test_inv11_deleting_every_audit_row_is_detected(fed, tmp_path):
    db = snapshot(fed, tmp_path / "copy.db")
    with connect(db) as conn:
        conn.execute("DELETE FROM audit_log")
    code, report, _ = verify(db)
    assert code == 1 and report["first_bad_seq"] == 1, report


# -- CLI reading ------------------------------------------------------------------------------
def test_audit_list_tail_and_export_json(fed, tmp_path):
    a = fed.a
    listed = a.cli_json("audit", "list", "--limit", "500")
    assert listed == fed.all_entries()[: len(listed)]
    assert [e["seq"] for e in listed] == list(range(1, len(listed) + 1))

    assert a.cli_json("audit", "list", "--limit", "2") == listed[:2]
    created = a.cli_json("audit", "list", "--event-type", "apikey_created")
    assert created and all(e["event_type"] == "apikey_created" for e in created)
    assert len(created) == sum(e["event_type"] == "apikey_created" for e in listed)
    for ref in (fed.b_node_id, fed.peer_id):
        of_peer = a.cli_json("audit", "list", "--peer", ref)
        assert [e["seq"] for e in of_peer] == [e["seq"] for e in listed if e["peer_id"] == fed.peer_id]
        assert len(of_peer) >= 5
    since = listed[len(listed) // 2]["ts"]
    later = a.cli_json("audit", "list", "--since", since, "--limit", "500")
    assert later and all(e["ts"] >= since for e in later)
    bad = a.cli("audit", "list", "--since", "yesterday")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr

    tail = a.cli("audit", "tail", "-n", "3", "--json")
    assert tail.returncode == 0, tail.stderr
    tail_entries = json.loads(tail.stdout)  # the shape of audit list --json
    newest = a.cli_json("audit", "list", "--limit", "500")[-3:]
    assert tail_entries == newest

    export = a.cli("audit", "export", "--json")
    assert export.returncode == 0, export.stderr
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert [e["seq"] for e in exported] == list(range(1, len(exported) + 1))
    # The export is enough to check the chain offline.
    prev = GENESIS
    for e in exported:
        assert e["prev_hash"] == prev
        detail = json.dumps(e["detail"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert row_hash(prev, e["ts"], e["event_type"], e["peer_id"], e["actor"], e["reason"], detail,
                        e["remote_addr"]) == e["hash"]
        prev = e["hash"]

    out = tmp_path / "audit.jsonl"
    res = a.cli("audit", "export", "--event-type", "peer_approved", "--out", str(out))
    assert res.returncode == 0 and res.stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["event_type"] == "peer_approved" and lines[0]["peer_id"] == fed.peer_id


# -- HTTP reading -----------------------------------------------------------------------------
def test_http_audit_requires_audit_read(fed):
    with fed.client(fed.no_audit) as c:
        r = c.get(AUDIT)
    assert r.status_code == 403
    assert r.json()["error"] == r.json()["detail"] == "permission_required"
    assert r.json()["permission"] == "audit:read"
    assert fed.audit().status_code == 200


def test_http_audit_filters_by_peer_event_type_and_time(fed):
    entries = fed.all_entries()
    for ref in (fed.b_node_id, fed.peer_id):
        r = fed.audit(peer_id=ref, limit=500)
        assert r.status_code == 200
        assert r.json()["entries"] == [e for e in entries if e["peer_id"] == fed.peer_id]
    assert fed.audit(peer_id="stigmem:node:nobody").json()["entries"] == []

    r = fed.audit(event_type="peer_approved")
    assert [e["event_type"] for e in r.json()["entries"]] == ["peer_approved"]
    assert fed.audit(event_type="no_such_event").json() == {"entries": [], "cursor": None, "has_more": False}

    mid = entries[len(entries) // 2]["ts"]
    since = fed.audit(since=mid, limit=500).json()["entries"]
    until = fed.audit(until=mid, limit=500).json()["entries"]
    assert since == [e for e in entries if e["ts"] >= mid]
    assert until == [e for e in entries if e["ts"] < mid]
    # Same instant, other spelling (offset instead of Z): same answer.
    as_offset = mid[:-1] + "+00:00"
    assert fed.audit(since=as_offset, limit=500).json()["entries"] == since
    window = fed.audit(since=entries[1]["ts"], until=entries[3]["ts"]).json()["entries"]
    assert [e["seq"] for e in window] == [e["seq"] for e in entries if entries[1]["ts"] <= e["ts"] < entries[3]["ts"]]
    assert fed.audit(until="0500-01-01T00:00:00Z").json()["entries"] == []
    assert len(fed.audit(since="0001-01-01T00:00:00Z", limit=500).json()["entries"]) == len(entries)
    combined = fed.audit(peer_id=fed.peer_id, event_type="peer_resumed", limit=500).json()["entries"]
    assert combined and combined == [e for e in entries
                                     if e["peer_id"] == fed.peer_id and e["event_type"] == "peer_resumed"]

    for name, value in [("since", "yesterday"), ("until", "2026-01-01"), ("since", "9999-12-31T23:59:59-01:00"),
                        ("until", "0001-01-01T00:00:00+01:00")]:
        bad = fed.audit(**{name: value})
        assert bad.status_code == 422, (name, value, bad.text)
        assert bad.json()["error"] == "invalid_request" and bad.json()["field"] == name


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5", "²", "", "9" * 30])
def test_http_audit_limit_outside_1_to_500_is_422(fed, limit):
    r = fed.audit(limit=limit)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == body["detail"] == "invalid_request" and body["field"] == "limit"


def test_http_audit_limit_bounds_are_inclusive(fed):
    assert len(fed.audit(limit=1).json()["entries"]) == 1
    assert fed.audit(limit=500).status_code == 200


@pytest.mark.parametrize("cursor", ["abc", "-1", "1" * 19, "²", "1e3", "", " 1"])
def test_http_audit_bad_cursor_is_422_invalid_cursor(fed, cursor):
    r = fed.audit(cursor=cursor)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == body["detail"] == "invalid_cursor" and body["field"] == "cursor"


def _walk(fed: Fed, *, order: str = "asc", append_between: bool = False, **filters: Any) -> list[dict]:
    seen: list[dict] = []
    cursor = None
    for _ in range(1000):
        params = {"limit": 2, "order": order, **filters}
        if cursor is not None:
            params["cursor"] = cursor
        r = fed.audit(**params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["entries"]) <= 2
        seen.extend(page["entries"])
        if page["entries"]:
            assert page["cursor"] == str(page["entries"][-1]["seq"])
        if not page["has_more"]:
            return seen
        assert len(page["entries"]) == 2
        cursor = page["cursor"]
        if append_between:
            fed.append_row()
    raise AssertionError("pagination did not end")


def test_http_audit_cursor_pagination_has_no_duplicates_or_gaps(fed):
    entries = fed.all_entries()
    walked = _walk(fed)
    assert walked == entries
    of_peer = _walk(fed, peer_id=fed.peer_id)
    assert of_peer == [e for e in entries if e["peer_id"] == fed.peer_id]


def test_http_audit_pagination_is_stable_while_rows_are_appended(fed):
    before = fed.all_entries()
    walked = _walk(fed, append_between=True)
    after = fed.all_entries()
    assert len(after) > len(before)
    seqs = [e["seq"] for e in walked]
    assert len(seqs) == len(set(seqs))
    assert walked == after  # every row, including those appended during the walk, once and in order
    assert after[: len(before)] == before  # and the old rows did not change


def test_http_audit_order_desc_pages_newest_first(fed):
    entries = fed.all_entries()
    first = fed.audit(order="desc", limit=3).json()
    assert first["entries"] == list(reversed(entries))[:3]
    walked = _walk(fed, order="desc", append_between=True)
    seqs = [e["seq"] for e in walked]
    # Rows appended during the walk are newer than its start: they are not in it, and nothing else is lost.
    assert seqs == list(range(entries[-1]["seq"], 0, -1))
    assert walked == list(reversed(entries))
    bad = fed.audit(order="sideways")
    assert bad.status_code == 422 and bad.json()["field"] == "order"


def test_http_audit_empty_page_keeps_the_cursor(fed):
    last = fed.all_entries()[-1]["seq"]
    page = fed.audit(cursor=str(last)).json()
    assert page == {"entries": [], "cursor": str(last), "has_more": False}
    fed.append_row()
    resumed = fed.audit(cursor=page["cursor"]).json()
    assert [e["seq"] for e in resumed["entries"]] == [last + 1]
