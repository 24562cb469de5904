"""`stigmem-node doctor [--json]` against real served nodes, federated: healthy, a stopped peer,
a missing pepper, a database readable by others, a tampered audit row, a database that does
not answer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.audit_tools import read_rows, write_rows
from tests.nodes import ServedNode, run_cli, stop_all
from tests.test_backup import federate


def doctor(node: ServedNode) -> tuple[int, dict]:
    res = node.cli("doctor", "--json")
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture
def fed(start_node) -> tuple[ServedNode, ServedNode]:
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    return a, b


def test_a_healthy_federated_node_passes_every_check(fed):
    a, b = fed
    code, report = doctor(a)
    assert code == 0 and report["ok"] is True, report
    assert all(set(c) == {"name", "status", "detail"} for c in report["checks"])
    assert {c["status"] for c in report["checks"]} == {"OK"}, report
    names = by_name(report)
    peer = f"peer {b.well_known()['node_id']}"
    for name in ("database", "pepper", "node url", f"{peer} reachable", f"{peer} declaration", f"{peer} clock",
                 "key age", "rotation", "audit chain"):
        assert name in names, name
    if a.engine == "sqlite":
        assert "file modes" in names and "directory mode" in names
    # Human output: one line per check, status first.
    human = a.cli("doctor")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert len(lines) == len(report["checks"]) and all(line.startswith("OK   ") for line in lines)
    # The database check's write was rolled back.
    assert a.sql("SELECT COUNT(*) FROM node_meta WHERE key = 'doctor_probe'") == [(0,)]


def test_a_stopped_peer_fails_its_reachability_check(fed):
    a, b = fed
    peer = f"peer {b.well_known()['node_id']}"
    stop_all([b], wait=True)
    code, report = doctor(a)
    assert code == 1 and report["ok"] is False
    names = by_name(report)
    assert names[f"{peer} reachable"]["status"] == "FAIL" and "fetch_failed" in names[f"{peer} reachable"]["detail"]
    assert names[f"{peer} clock"]["status"] == "WARN"
    assert [c["name"] for c in report["checks"] if c["status"] == "FAIL"] == [f"{peer} reachable"]
    human = a.cli("doctor")
    assert human.returncode == 1
    assert any(line.startswith("FAIL ") and peer in line for line in human.stdout.splitlines())


def test_skew_of_recent_tokens_is_reported(fed):
    a, b = fed
    wk = a.well_known()
    # b's clock 100 s ahead: a token whose iat is in the future, rejected and audited by a.
    now_ms = b.node.clock.now_ms()
    b.node.clock.now_ms = lambda: now_ms + 100_000  # type: ignore[method-assign]
    path = "/v1/federation/facts?limit=1"
    token = b.node.mint_peer_token(wk["node_id"], ["company"], method="GET", path_qs=path)
    with a.client("") as c:
        assert c.get(path, headers={"Authorization": f"Bearer {token}"}).json()["error"] == "iat_in_future"
    code, report = doctor(a)
    clock = by_name(report)[f"peer {b.well_known()['node_id']} clock"]
    assert clock["status"] == "FAIL" and "most recent token -100" in clock["detail"], clock
    assert code == 1


@pytest.mark.sqlite_only
def test_a_missing_pepper_fails(fed):
    a, _ = fed
    os.unlink(str(a.db) + ".pepper")
    code, report = doctor(a)
    assert code == 1
    assert by_name(report)["pepper"]["status"] == "FAIL" and "pepper" in by_name(report)["pepper"]["detail"]


@pytest.mark.sqlite_only
def test_a_database_readable_by_others_fails_until_it_is_private_again(fed):
    a, _ = fed
    os.chmod(a.db, 0o644)
    code, report = doctor(a)
    assert code == 1
    modes = by_name(report)["file modes"]
    assert modes["status"] == "FAIL" and "0644" in modes["detail"] and str(a.db) in modes["detail"]
    # Opening the node made it private again: the next run passes.
    assert stat.S_IMODE(os.stat(a.db).st_mode) == 0o600
    code, report = doctor(a)
    assert code == 0 and by_name(report)["file modes"]["status"] == "OK"


def test_a_tampered_audit_row_fails(fed):
    a, _ = fed
    rows = read_rows(a.target)
    rows[1]["detail"] = rows[1]["detail"].replace("}", ',"x":1}', 1)
    write_rows(a.target, rows)
    code, report = doctor(a)
    assert code == 1
    audit = by_name(report)["audit chain"]
    assert audit["status"] == "FAIL" and "BROKEN at row 2" in audit["detail"], audit


@pytest.mark.sqlite_only
def test_a_database_that_does_not_answer_is_a_fail_line_not_a_crash(tmp_path):
    db = tmp_path / "broken.db"
    db.write_bytes(b"not a database" * 100)
    db.chmod(0o600)
    res = run_cli("doctor", "--json", db=db)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is False and report["checks"][0]["name"] == "database"
    assert report["checks"][0]["status"] == "FAIL" and "not_a_stigmem_database" in report["checks"][0]["detail"]
    human = run_cli("doctor", db=db)
    assert human.returncode == 1 and human.stdout.startswith("FAIL database")


def test_token_skew_is_a_time_rejection_first_then_the_last_accepted_token_of_the_last_hour():
    from datetime import timedelta

    from stigmem_node.clock import Clock, iso
    from stigmem_node.doctor import token_skew
    from stigmem_node.store.activity import PeerPull

    clock = Clock()
    recent, old = iso(clock.now() - timedelta(minutes=5)), iso(clock.now() - timedelta(hours=2))
    pulls = {"p-recent": PeerPull("p-recent", recent, 9, 9, 1_500),
             "p-old": PeerPull("p-old", old, 9, 9, 40_000)}
    peer_ids = {"n-recent": "p-recent", "n-old": "p-old", "n-refused": "p-recent"}
    rejected = {"n-refused": -45_000}
    skew = token_skew(rejected.get, lambda: pulls, peer_ids.get, clock)
    assert skew("n-refused") == -45_000  # a token refused for its time outweighs an accepted one
    assert skew("n-recent") == 1_500  # accepted tokens are measured too, not only refused ones
    assert skew("n-old") is None  # older than an hour: no longer says anything
    assert skew("n-unknown") is None
