"""Wire interoperability with the public reference node (PyPI ``stigmem-node==0.9.0a12``).

The reference runs in its own virtual environment (``refnode.py``) and is driven only
over HTTP on 127.0.0.1 and through its own console scripts; our nodes run as real
``stigmem-node serve`` subprocesses (``tests/nodes.py``).  Nothing here imports the
reference.

1. ``test_we_pull_from_reference``: ``stigmem-node pull`` on our node takes every
   company/public fact the reference holds, of every value type, unchanged in id and
   CID, and no local/team fact.
2. ``test_reference_pulls_from_us``: the reference's own pull loop takes every
   company/public fact of ours, integers included, with nothing rejected or logged.
3. ``test_mixed_triangle``: two of our nodes and one reference node, all peered with each
   other; each node ends with the company/public facts of the other two, exactly once,
   each received directly from its origin (nobody relays).  One of our nodes registers
   the reference with ``peers add URL --declaration FILE``, the other lets the
   reference's own ``stigmem federation register-peer`` POST its declaration to it.
4. ``test_reference_poison_pills_do_not_block_our_feed``: facts a reference receiver
   cannot ingest (instruction facts, HLCs older than 30 days) must not stall its pull
   loop on our feed: we keep instruction facts home by default and serve old facts
   without their HLC.

What arrives, exactly (asserted below):

* reference -> us: a reference node stores ``str(v)`` of what its client posted but
  serves every number as a JSON float (``42`` -> ``42.0``, ``-7`` -> ``-7.0``,
  ``10**20`` -> ``1e+20``).  Our receiver recognises the integer spelling the reference
  hashed, stores it, and serves 64-bit integers as integers again (``42``, ``-7``);
  ``10**20`` is kept as the integer text (so its CID still verifies) and served as the
  float ``1e+20``.  Floats stay floats (``1.5``, ``42.0``, ``1e+20``, ``1e-07``,
  ``0.30000000000000004``).
* us -> reference: we serve integers as JSON integers and hash them as ``"42"``; the
  reference recomputes the same CID and ingests them.  Its own API then shows them as
  floats (``42.0``), as it shows every number.  Entity, relation and source arrive
  verbatim (no case folding), valid_until verbatim (the text our client gave, which the
  origin signature covers).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodes import RunningNode

from .refnode import ReferenceNode, ReferenceUnavailable, ensure_reference_venv, pubkey_fingerprint

pytestmark = pytest.mark.interop

SHARED = ("company", "public")
SCOPES = ("local", "team", "company", "public")
PULL_INTERVAL_S = 1
ARRIVAL_TIMEOUT_S = 30.0

# Reference events that mean "something of a peer's was refused".
REF_BAD_EVENTS = {"rejected_token", "scope_violation", "replay_attempt", "federation_integrity_rejected",
                  "peer_approval_failed", "san_mismatch"}
# Our events that mean the same.
OUR_BAD_EVENTS = {"token_rejected", "replay_attempt", "scope_violation", "fact_rejected"}
# Reference log lines that mean a pull from us went wrong (or a fact was skipped).
REF_BAD_LOG = re.compile(
    r"cid_mismatch|origin_unresolvable|origin_not_sender|skip fact|Tombstone pull|dropping page"
    r"|Pull from \S+ returned|Pull network error|Unexpected error in pull loop|IntegrityError|Traceback"
    r"|federation_integrity",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- the value matrix


def value_cases(origin: str) -> list[dict[str, Any]]:
    """One fact per value type (and a few extra numbers), each with its own relation.

    ``served`` is the Python type our node must serve for the value, whichever node
    originated it (``None``: the type of the value as sent).
    """
    cases = [
        {"key": "string", "value": {"type": "string", "v": f"hello from {origin}"}},
        {"key": "text", "value": {"type": "text", "v": f"multi\nline text from {origin}\n\ttabbed ü"}},
        {"key": "int-42", "value": {"type": "number", "v": 42}, "served": int},
        {"key": "int-minus-7", "value": {"type": "number", "v": -7}, "served": int},
        {"key": "float-1-5", "value": {"type": "number", "v": 1.5}, "served": float},
        {"key": "float-1e20", "value": {"type": "number", "v": 1e20}, "served": float},
        {"key": "float-1e-7", "value": {"type": "number", "v": 1e-07}, "served": float},
        {"key": "float-point-3", "value": {"type": "number", "v": 0.1 + 0.2}, "served": float},
        {"key": "float-42-0", "value": {"type": "number", "v": 42.0}, "served": float},
        {"key": "bool-true", "value": {"type": "boolean", "v": True}},
        {"key": "bool-false", "value": {"type": "boolean", "v": False}},
        {"key": "datetime", "value": {"type": "datetime", "v": "2026-01-01T00:00:00Z"}},
        {"key": "ref", "value": {"type": "ref", "v": "stigmem://interop/item/2"}},
        {"key": "null", "value": {"type": "null", "v": None}},
        {"key": "unicode", "value": {"type": "text", "v": "héllo wörld — 日本語 🎉 Ωμέγα"}},
        {"key": "valid-until", "value": {"type": "string", "v": f"expires, from {origin}"},
         "valid_until": "2030-01-01T00:00:00Z"},
    ]
    if origin == "ours":
        # An offset and a fraction: kept as written, signed as written, and so accepted by
        # a reference receiver (whose signature check covers the text).
        cases.append({"key": "valid-until-offset", "value": {"type": "string", "v": "expires, offset"},
                      "valid_until": "2030-06-01T14:30:00.25+02:00"})
    if origin == "ref":
        # An integer beyond 64 bits: the reference hashes "100000000000000000000" and serves
        # 1e+20; we keep its integer text (so the CID matches) and serve it as a float,
        # since our integers are 64-bit (our own API refuses such an integer).
        cases.append({"key": "int-10-pow-20", "value": {"type": "number", "v": 10**20}, "served": float})
    return cases


def fact_bodies(entity: str, origin: str, scopes=SCOPES, confidence: float = 0.9) -> list[dict[str, Any]]:
    bodies = []
    for scope in scopes:
        for case in value_cases(origin):
            body = {
                "entity": entity,
                "relation": f"memory:{case['key']}-{scope}",
                "value": dict(case["value"]),
                "source": f"stigmem://interop/agent/{origin}",
                "confidence": confidence,
                "scope": scope,
            }
            if "valid_until" in case:
                body["valid_until"] = case["valid_until"]
            bodies.append({"body": body, "case": case})
    return bodies


# --------------------------------------------------------------------------- helpers


def _skip_loudly(exc: ReferenceUnavailable) -> None:
    pytest.skip(f"!!! INTEROP NOT RUN: reference node stigmem-node 0.9.0a12 unavailable: {exc.reason}")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, diag: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}\n{diag()}")
        time.sleep(0.25)


def ours_get(node: RunningNode, path: str, **params: Any) -> httpx.Response:
    with node.client() as c:
        return c.get(path, params=params)


def ours_facts(node: RunningNode, entity: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if entity is not None:
            params["entity"] = entity
        if cursor:
            params["cursor"] = cursor
        r = ours_get(node, "/v1/facts", **params)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["facts"]
        if not page["has_more"]:
            return out
        cursor = page["cursor"]


def ours_post_facts(node: RunningNode, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with node.client() as c:
        r = c.post("/v1/facts", json={"facts": bodies})
    assert r.status_code == 201, r.text
    page = r.json()
    assert page["created"] == len(bodies), page
    return page["facts"]


def ours_audit(node: RunningNode, *, after_seq: int = 0) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    cursor = str(after_seq) if after_seq else None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        r = ours_get(node, "/v1/federation/audit", **params)
        assert r.status_code == 200, r.text
        page = r.json()
        entries += page["entries"]
        if not page["has_more"]:
            return entries
        cursor = page["cursor"]


def ours_audit_seq(node: RunningNode) -> int:
    r = ours_get(node, "/v1/federation/audit", limit=1, order="desc")
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    return entries[0]["seq"] if entries else 0


def ours_pull(node: RunningNode, *extra: str) -> dict[str, Any]:
    res = node.cli("pull", "--json", *extra)
    assert res.returncode == 0, f"stigmem-node pull exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def peer_result(pull: dict[str, Any], node_id: str) -> dict[str, Any]:
    (found,) = [p for p in pull["peers"] if p["node_id"] == node_id]
    return found


def ref_facts(ref: ReferenceNode) -> list[dict[str, Any]]:
    """Every fact on the reference node (all pages), federated copies included."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"include_contradicted": "true", "include_expired": "true"}
        if cursor:
            params["cursor"] = cursor
        page = ref.query_facts(**params)
        out += page
        if len(page) < 500:
            return out
        cursor = page[-1]["id"]
    raise AssertionError("reference fact listing did not end")


def ref_bad_audit(ref: ReferenceNode, *ids: str) -> list[dict[str, Any]]:
    """Reference audit rows that refuse something of the peer (row id or raw node_id) given."""
    wanted = set(ids)
    return [e for e in ref.audit() if e.get("event_type") in REF_BAD_EVENTS and e.get("peer_id") in wanted]


class LogMark:
    """Remember where a log file ended, to read only what was written after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")


def bad_ref_log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if REF_BAD_LOG.search(line)]


# --------------------------------------------------------------------------- handshakes


def link_ref_and_ours(ref: ReferenceNode, ours: RunningNode, tmp: Path, *,
                      via: str = "declaration-file") -> dict[str, str]:
    """Register and approve both ways between a reference node and one of ours.

    Order (the reference's silent-drop pitfall): the reference's org manifest is
    published first (``ref`` fixture); both registrations; then the *reference* approves
    us and its background task fetches our ``/.well-known/stigmem-manifest.json`` and
    binds our entity_uri; only then do we approve the reference, which is what lets its
    pull loop in.  A pull the reference ran before the binding would skip our facts
    (``origin_unresolvable``) and still advance its cursor past them.
    """
    wk = ours.well_known()
    # Our fingerprint uses the reference's formula (sha256 over the base64url key text).
    assert wk["pubkey_fingerprint"] == pubkey_fingerprint(wk["federation_pubkey"])

    # 1. The reference on our node.  It publishes no declaration in its well-known, so
    #    either the operator passes it as a file, or the reference's own CLI POSTs it to us.
    if via == "declaration-file":
        decl_file = tmp / f"ref-declaration-{ours.name}.json"
        decl_file.write_text(json.dumps(ref.declaration(SHARED)))
        res = ours.cli("peers", "add", ref.url, "--declaration", str(decl_file), "--json")
        assert res.returncode == 0, f"peers add failed: {res.stdout}\n{res.stderr}"
        on_ours = json.loads(res.stdout)
    else:
        assert via == "reference-cli", via
        assert ref.venv is not None
        proc = subprocess.run(
            [str(ref.venv / "bin" / "stigmem"), "federation", "register-peer", "--remote-url", ours.url,
             "--api-key", ours.api_key],
            cwd=ref.work_dir, env=ref.env(), capture_output=True, text=True, timeout=60)
        # It exits 1 on its normal outcome, "registered but not yet active (pending_approval)".
        assert "status=pending_approval" in proc.stdout + proc.stderr, (proc.returncode, proc.stdout, proc.stderr)
        res = ours.cli("peers", "show", ref.node_id, "--json")
        assert res.returncode == 0, f"peers show failed: {res.stdout}\n{res.stderr}"
        on_ours = json.loads(res.stdout)
    assert on_ours["status"] == "pending_approval" and on_ours["node_id"] == ref.node_id, on_ours
    assert on_ours["pubkey_fingerprint"] == ref.fingerprint

    # 2. Our node on the reference: the declaration our well-known publishes, POSTed as is.
    on_ref = ref.register_peer(wk["declaration"])
    assert on_ref["status"] == "pending_approval", on_ref

    # 3. The reference approves us, by our published fingerprint, and binds our manifest.
    approved = ref.approve(on_ref["peer_id"], wk["pubkey_fingerprint"])
    assert approved["status"] == "active", approved
    ref.wait_manifest_bound(on_ref["peer_id"])

    # 4. Only now do we approve the reference (its pull loop starts getting 200s).
    mark = LogMark(ours.log_path)
    res = ours.cli("peers", "approve", ref.node_id, "--fingerprint", ref.fingerprint, "--json")
    assert res.returncode == 0, f"peers approve failed: {res.stdout}\n{res.stderr}"
    assert json.loads(res.stdout)["status"] == "active"

    # 5. Wait for one whole cycle of the reference's loop against us to succeed (facts,
    #    then tombstones, both 200 in our access log), so that a cycle that started before
    #    step 4 cannot show up in what the tests check afterwards.
    wait_for(lambda: re.search(r'"GET /v1/federation/tombstones\S* HTTP/1.1" 200', mark.new_text()),
             10 * PULL_INTERVAL_S, "a first successful pull cycle of the reference against our node",
             lambda: ref.log_tail(20) + "\n--- ours\n" + ours.log()[-3000:])
    return {"ref_peer_id_on_ours": on_ours["peer_id"], "our_peer_id_on_ref": on_ref["peer_id"]}


def link_ours(a: RunningNode, b: RunningNode) -> None:
    """Two of our nodes: ``peers add URL`` needs nothing but the URL (the well-known has the declaration)."""
    for x, y in ((a, b), (b, a)):
        res = x.cli("peers", "add", y.url, "--json")
        assert res.returncode == 0, f"peers add failed: {res.stdout}\n{res.stderr}"
        assert json.loads(res.stdout)["status"] == "pending_approval"
    for x, y in ((a, b), (b, a)):
        fp = y.well_known()["pubkey_fingerprint"]
        res = x.cli("peers", "approve", y.well_known()["node_id"], "--fingerprint", fp, "--json")
        assert res.returncode == 0, f"peers approve failed: {res.stdout}\n{res.stderr}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference_venv():
    try:
        return ensure_reference_venv()
    except ReferenceUnavailable as exc:
        _skip_loudly(exc)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def ref(reference_venv, workdir):
    node = ReferenceNode(workdir / "ref", venv=reference_venv, pull_interval_s=PULL_INTERVAL_S)
    try:
        node.start()
    except ReferenceUnavailable as exc:
        _skip_loudly(exc)
    try:
        node.put_manifest()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def ours(workdir):
    # No in-server pull schedule: this node pulls only when the test runs `stigmem-node pull`.
    node = RunningNode(workdir / "ours", "ours", args=("--access-log",))
    try:
        assert node.api_key, node.log()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def linked(ref, ours, workdir):
    ids = link_ref_and_ours(ref, ours, workdir)
    return {**ids, "ref_log_mark": LogMark(ref.log_path), "our_audit_seq": ours_audit_seq(ours)}


# --------------------------------------------------------------------------- 1. we pull from the reference


def test_we_pull_from_reference(ref, ours, linked):
    entity = "stigmem://interop/ref-to-ours/item"
    written = []
    for item in fact_bodies(entity, "ref"):
        record = ref.assert_fact(item["body"])
        assert record["cid"].startswith("sha256:") and record["scope"] == item["body"]["scope"]
        written.append({**item, "record": record})
    permitted = [w for w in written if w["body"]["scope"] in SHARED]
    withheld = [w for w in written if w["body"]["scope"] not in SHARED]

    # The reference's own API already shows every number as a float.
    by_key = {w["body"]["relation"]: w["record"] for w in written}
    assert by_key["memory:int-42-company"]["value"]["v"] == 42.0
    assert isinstance(by_key["memory:int-42-company"]["value"]["v"], float)

    seq_before = ours_audit_seq(ours)
    result = ours_pull(ours)  # plain `stigmem-node pull --json`: every active peer (only the reference here)
    from_ref = peer_result(result, ref.node_id)
    assert from_ref["ok"] is True, from_ref
    assert from_ref["rejected"] == 0, (from_ref, ours_audit(ours, after_seq=seq_before))
    assert from_ref["new"] == len(permitted), from_ref
    assert result["rejected"] == 0

    got = {f["id"]: f for f in ours_facts(ours, entity)}
    for w in permitted:
        rec, case = w["record"], w["case"]
        copy = got.get(rec["id"])
        assert copy is not None, f"{w['body']['relation']} did not arrive"
        assert copy["cid"] == rec["cid"], w["body"]["relation"]
        assert copy["scope"] == rec["scope"]
        assert copy["entity"] == rec["entity"] and copy["relation"] == rec["relation"]
        assert copy["source"] == rec["source"]
        assert copy["confidence"] == rec["confidence"] == 0.9
        assert copy["valid_until"] == rec["valid_until"] == w["body"].get("valid_until")
        assert copy["received_from"] == ref.node_id and copy["origin_node_id"] == ref.node_id
        assert copy["value"]["type"] == case["value"]["type"]
        assert copy["value"]["interpret_as"] == "content"
        sent, v = case["value"]["v"], copy["value"]["v"]
        assert v == sent, (w["body"]["relation"], v, sent)
        # Integers: served by the reference as 42.0 / -7.0, stored and served by us as
        # integers again.  Floats (42.0 included) stay floats.
        assert type(v) is case.get("served", type(sent)), (w["body"]["relation"], v)
    assert len([f for f in got.values() if f["received_from"] == ref.node_id]) == len(permitted)

    # Nothing local or team arrived, nor is it anywhere on our node.
    for w in withheld:
        assert w["record"]["id"] not in got
        assert ours_get(ours, f"/v1/facts/{w['record']['id']}").status_code == 404
    assert {f["scope"] for f in got.values()} <= set(SHARED)

    # No rejection on either side: none of our facts' audit, none of the reference's.
    bad = [e for e in ours_audit(ours, after_seq=seq_before) if e["event_type"] in OUR_BAD_EVENTS]
    assert not bad, bad
    assert not ref_bad_audit(ref, linked["our_peer_id_on_ref"], ours.well_known()["node_id"])

    # A second pass finds nothing new: the cursor we stored is the reference's hlc text.
    again = peer_result(ours_pull(ours, "--peer", ref.node_id), ref.node_id)
    assert (again["new"], again["duplicates"], again["rejected"]) == (0, 0, 0), again


# --------------------------------------------------------------------------- 2. the reference pulls from us


def test_reference_pulls_from_us(ref, ours, linked):
    entity = "stigmem://interop/ours-to-ref/item"
    our_node_id = ours.well_known()["node_id"]
    items = fact_bodies(entity, "ours")
    # Our node stores entity, relation and source as given (a reference node lower-cases
    # and hyphenates them on its own asserts, but keeps a peer's verbatim; the CID covers them).
    mixed = {"key": "mixed-case", "value": {"type": "string", "v": "Mixed Case"}}
    items.append({"case": mixed, "body": {"entity": "Stigmem://Interop/Ours-To-Ref/Mixed Case",
                                          "relation": "Memory:Mixed Case", "value": dict(mixed["value"]),
                                          "source": "Agent:Interop Ours", "confidence": 0.9, "scope": "public"}})
    log_mark = LogMark(ours.log_path)
    stored = ours_post_facts(ours, [i["body"] for i in items])
    written = [{**i, "record": s} for i, s in zip(items, stored)]
    permitted = [w for w in written if w["body"]["scope"] in SHARED]
    withheld = [w for w in written if w["body"]["scope"] not in SHARED]
    # Our own API keeps integers as integers and floats as floats.
    for w in written:
        assert type(w["record"]["value"]["v"]) is w["case"].get("served", type(w["case"]["value"]["v"])), w

    wanted = {w["record"]["id"] for w in permitted}

    def arrived() -> dict[str, dict] | None:
        facts = {f["id"]: f for f in ref_facts(ref)}
        return facts if wanted <= facts.keys() else None

    def diag() -> str:
        have = {f["id"] for f in ref_facts(ref)}
        missing = [w["body"]["relation"] for w in permitted if w["record"]["id"] not in have]
        return f"missing on the reference: {missing}\n--- reference log\n{ref.log_tail(60)}"

    got = wait_for(arrived, ARRIVAL_TIMEOUT_S, "the reference's pull loop to take our facts", diag)

    for w in permitted:
        rec, case = w["record"], w["case"]
        copy = got[rec["id"]]
        assert copy["cid"] == rec["cid"], w["body"]["relation"]
        assert copy["scope"] == rec["scope"]
        assert copy["entity"] == rec["entity"] and copy["relation"] == rec["relation"]
        assert copy["source"] == rec["source"]
        assert copy["confidence"] == 0.9
        # The reference keeps valid_until verbatim (the text our client gave, which we signed).
        assert copy["valid_until"] == rec["valid_until"]
        assert copy["received_from"] == our_node_id and copy["origin_node_id"] == our_node_id
        assert copy["value"]["type"] == case["value"]["type"]
        sent, v = case["value"]["v"], copy["value"]["v"]
        # Equal in value; the reference's API shows every number as a float (42 -> 42.0).
        assert v == sent, (w["body"]["relation"], v, sent)
        if case["value"]["type"] == "number":
            assert type(v) is float
    if any(w["body"].get("valid_until") for w in permitted):
        vu = [(w["record"]["valid_until"], w["body"]["valid_until"]) for w in permitted if w["body"].get("valid_until")]
        assert all(echoed == given for echoed, given in vu), vu  # as the client wrote it

    for w in withheld:
        assert w["record"]["id"] not in got
        assert ref.get_fact(w["record"]["id"]).status_code == 404

    # Let one more cycle run (pull + tombstone poll), then check that nothing was refused.
    time.sleep(PULL_INTERVAL_S * 2.5)
    assert not ref_bad_audit(ref, linked["our_peer_id_on_ref"], our_node_id)
    bad_lines = bad_ref_log_lines(linked["ref_log_mark"].new_text())
    assert not bad_lines, "\n".join(bad_lines[:20])
    ours_bad = [e for e in ours_audit(ours, after_seq=linked["our_audit_seq"])
                if e["event_type"] in OUR_BAD_EVENTS]
    assert not ours_bad, ours_bad

    # Our access log: the reference polled our facts and tombstones and always got 200,
    # and once it held a cursor it never came back without one (no full re-scan).
    access = [line for line in log_mark.new_text().splitlines() if "/v1/federation/" in line]
    facts_req = [line for line in access if "/v1/federation/facts" in line]
    tomb_req = [line for line in access if "/v1/federation/tombstones" in line]
    assert facts_req and tomb_req, "\n".join(access[-20:])
    assert all('" 200' in line for line in facts_req + tomb_req), "\n".join(access[-20:])
    with_cursor = [("cursor=" in line) for line in facts_req]
    if True in with_cursor:
        first = with_cursor.index(True)
        assert all(with_cursor[first:]), "\n".join(facts_req)


def test_reference_polls_our_tombstones_after_an_erasure_without_errors(ref, ours, linked):
    """After we erase a fact the reference pulled, the reference keeps polling our tombstones
    (it asks no ``tv``, so its pages stay empty: it could neither store nor verify ours) and
    pulling our new facts, and logs nothing wrong; it keeps its copy (docs/interop.md)."""
    entity = "stigmem://interop/ours-to-ref/erased"
    (stored,) = ours_post_facts(ours, [{"entity": entity, "relation": "memory:note", "source": "agent:interop",
                                         "value": {"type": "string", "v": "to be erased"}, "confidence": 0.9,
                                         "scope": "public"}])
    wait_for(lambda: ref.get_fact(stored["id"]).status_code == 200, timeout_s=30, what="the reference pulls the fact")
    mark = LogMark(ref.log_path)
    access = LogMark(ours.log_path)
    with ours.client() as c:
        res = c.delete(f"/v1/facts/{stored['id']}", params={"reason": "right_to_erasure"})
    assert res.status_code == 200 and res.json()["local_only"] is False, res.text
    # It polls our tombstones (a page holding the new one) and pulls on, for a few cycles.
    wait_for(lambda: re.search(r'"GET /v1/federation/tombstones\S* HTTP/1.1" 200', access.new_text()),
             timeout_s=30, what="the reference polls our tombstones")
    (later,) = ours_post_facts(ours, [{"entity": entity + "/after", "relation": "memory:note",
                                        "source": "agent:interop", "value": {"type": "string", "v": "after"},
                                        "confidence": 0.9, "scope": "public"}])
    wait_for(lambda: ref.get_fact(later["id"]).status_code == 200, timeout_s=30, what="the reference pulls on")
    time.sleep(PULL_INTERVAL_S * 2.5)
    bad = bad_ref_log_lines(mark.new_text())
    assert not bad, "\n".join(bad[:20])
    assert not ref_bad_audit(ref, linked["our_peer_id_on_ref"], ours.well_known()["node_id"])


# --------------------------------------------------------------------------- 3. mixed triangle


@pytest.fixture(scope="module")
def ours2(workdir, ref, ours, linked):
    node = RunningNode(workdir / "ours2", "ours2", args=("--access-log",))
    try:
        assert node.api_key, node.log()
        # This one registers the reference through the reference's own CLI.
        ids = link_ref_and_ours(ref, node, workdir, via="reference-cli")
        link_ours(ours, node)
        yield node, ids
    finally:
        node.stop()


def test_mixed_triangle(ref, ours, ours2, linked):
    o2, o2_ids = ours2
    # One entity per origin: the same entity and relation with different values on two
    # nodes would be a contradiction, which a reference node records as extra
    # (unserved, CID-less) "stigmem:conflict:*" facts.
    prefix = "stigmem://interop/triangle/"
    n1, n2 = ours.well_known()["node_id"], o2.well_known()["node_id"]
    ref_log = LogMark(ref.log_path)
    seq1, seq2 = ours_audit_seq(ours), ours_audit_seq(o2)

    def subset(origin: str) -> list[dict[str, Any]]:
        keep = {"string", "int-42", "int-minus-7", "float-1-5", "unicode", "valid-until", "null"}
        return [i for i in fact_bodies(prefix + origin, origin) if i["case"]["key"] in keep]

    on_ref = [ref.assert_fact(i["body"]) for i in subset("ref")]
    on_1 = ours_post_facts(ours, [i["body"] for i in subset("ours1")])
    on_2 = ours_post_facts(o2, [i["body"] for i in subset("ours2")])
    shared = lambda facts: {f["id"]: f for f in facts if f["scope"] in SHARED}  # noqa: E731
    ref_ids, ids1, ids2 = shared(on_ref), shared(on_1), shared(on_2)
    assert len(ref_ids) == len(ids1) == len(ids2) == 14

    # The reference pulls both of ours with its own loop.
    def ref_has_all() -> bool:
        have = {f["id"] for f in ref_facts(ref)}
        return (ids1.keys() | ids2.keys()) <= have

    wait_for(ref_has_all, ARRIVAL_TIMEOUT_S, "the reference to take both of our nodes' facts",
             lambda: ref.log_tail(60))

    # Each of ours pulls its two peers once.  The reference serves every shared fact it
    # originated (the second node of ours also gets those of the earlier tests) and none
    # of the facts it received: nothing is relayed, so nothing arrives twice.
    # (Facts without a CID, such as the reference's own "stigmem:conflict:*" and
    # "stigmem:received_from" bookkeeping facts, are never served.)
    ref_own_shared = {f["id"] for f in ref_facts(ref)
                      if f["received_from"] is None and f["scope"] in SHARED and f["cid"]}
    assert set(ref_ids) <= ref_own_shared
    for node, other_node, other_id in ((ours, o2, n2), (o2, ours, n1)):
        other_own_shared = {f["id"] for f in ours_facts(other_node)
                            if f["received_from"] is None and f["scope"] in SHARED}
        held = {f["id"] for f in ours_facts(node)}
        result = ours_pull(node)
        assert result["ok"] and result["rejected"] == 0, result
        r = peer_result(result, ref.node_id)
        o = peer_result(result, other_id)
        assert (r["new"], r["duplicates"], r["rejected"]) == (len(ref_own_shared - held), 0, 0), r
        assert (o["new"], o["duplicates"], o["rejected"]) == (len(other_own_shared - held), 0, 0), o

    # Every node: its own facts (every scope) plus the other two's company/public ones,
    # exactly once each, each received from its origin directly.
    expected = {
        "ref": ({f["id"] for f in on_ref}, {n1: ids1, n2: ids2}),
        "ours1": ({f["id"] for f in on_1}, {ref.node_id: ref_ids, n2: ids2}),
        "ours2": ({f["id"] for f in on_2}, {ref.node_id: ref_ids, n1: ids1}),
    }
    holdings = {
        "ref": [f for f in ref_facts(ref) if f["entity"].startswith(prefix)],
        "ours1": [f for f in ours_facts(ours) if f["entity"].startswith(prefix)],
        "ours2": [f for f in ours_facts(o2) if f["entity"].startswith(prefix)],
    }
    for name, facts in holdings.items():
        counts = Counter(f["id"] for f in facts)
        assert all(c == 1 for c in counts.values()), (name, [i for i, c in counts.items() if c > 1])
        own, received = expected[name]
        want = set(own).union(*(set(v) for v in received.values()))
        assert set(counts) == want, (name, sorted(want - set(counts)), sorted(set(counts) - want))
        by_id = {f["id"]: f for f in facts}
        for origin, ids in received.items():
            for fid, original in ids.items():
                copy = by_id[fid]
                assert copy["cid"] == original["cid"], (name, fid)
                assert copy["received_from"] == origin, (name, fid, copy["received_from"])
                assert copy["value"]["v"] == original["value"]["v"], (name, fid)
        assert len({f["cid"] for f in facts}) == len(facts), name

    # Nothing refused anywhere.
    assert not ref_bad_audit(ref, linked["our_peer_id_on_ref"], o2_ids["our_peer_id_on_ref"], n1, n2)
    bad_lines = bad_ref_log_lines(ref_log.new_text())
    assert not bad_lines, "\n".join(bad_lines[:20])
    for node, seq in ((ours, seq1), (o2, seq2)):
        bad = [e for e in ours_audit(node, after_seq=seq) if e["event_type"] in OUR_BAD_EVENTS]
        assert not bad, bad


# --------------------------------------------------------------------------- 4. reference poison pills


OLD_FACT_WRITER = """
import json, sys
from pathlib import Path
from stigmem_node.clock import Clock
from stigmem_node.config import from_env
from stigmem_node.node import Node

node = Node(from_env().with_overrides(db_path=Path(sys.argv[1])), clock=Clock(offset_s=-float(sys.argv[3])))
(stored,) = node.facts.assert_many(node.facts.validate_batch([json.loads(sys.argv[2])]))
print(json.dumps(stored.fact))
"""

# What a reference node's loop logs when one fact of a page aborts the whole cycle.
POISON_EVIDENCE = {
    "instruction": "quarantine_garden_required",
    "instruction-relation": "quarantine_garden_required",
    "hlc-31-days-old": "FederationHlcSkewError",
}


@pytest.fixture
def fresh_pair(reference_venv, tmp_path):
    """A reference node and one of ours, linked, used by one test only (a poison pill
    blocks the reference's feed from that node for good)."""
    ref = ReferenceNode(tmp_path / "ref", venv=reference_venv, pull_interval_s=PULL_INTERVAL_S)
    ours = None
    try:
        ref.start()
        ref.put_manifest()
        ours = RunningNode(tmp_path / "ours", "ours", args=("--access-log",))
        link_ref_and_ours(ref, ours, tmp_path)
        yield ref, ours
    finally:
        if ours is not None:
            ours.stop()
        ref.stop()


@pytest.mark.parametrize("kind", sorted(POISON_EVIDENCE))
def test_reference_poison_pills_do_not_block_our_feed(fresh_pair, kind):
    """A fact that a reference receiver cannot ingest must not stop it ingesting the rest.

    A reference node aborts its whole pull cycle (cursor not saved) on an instruction fact
    when it has no quarantine garden, and on a fact whose HLC is more than 30 days old;
    every later fact from that peer is then never ingested.  Our node's feed must not
    contain such a fact in a form that a reference node chokes on.
    """
    ref, ours = fresh_pair
    base = {"entity": "stigmem://interop/poison/item", "source": "stigmem://interop/agent/ours",
            "confidence": 0.9, "scope": "company"}
    poison_body = {**base, "relation": "memory:poison", "value": {"type": "string", "v": "poison"}}
    if kind == "instruction":
        poison_body["value"]["interpret_as"] = "instruction"
    elif kind == "instruction-relation":
        poison_body["relation"] = "instruction:do-this"
    if kind == "hlc-31-days-old":
        # A fact this node wrote 31 days ago (its HLC and timestamp are from then).  It is
        # written first, by our own package with a clock moved back, so that no newer HLC
        # is seeded before it.
        res = subprocess.run(
            [sys.executable, "-c", OLD_FACT_WRITER, str(ours.db), json.dumps(poison_body),
             str(31 * 86400)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        poison = json.loads(res.stdout)
        assert int(poison["hlc"].split(".")[0]) < (time.time() - 30 * 86400) * 1000
    else:
        (poison,) = ours_post_facts(ours, [poison_body])
    (good,) = ours_post_facts(ours, [{**base, "relation": "memory:after-poison",
                                      "value": {"type": "string", "v": "after the poison"}}])

    evidence = POISON_EVIDENCE[kind]

    def settled() -> bool:
        have = {f["id"] for f in ref_facts(ref)}
        return good["id"] in have or ref.log_path.read_text(errors="replace").count(evidence) >= 2

    wait_for(settled, ARRIVAL_TIMEOUT_S, "the reference to ingest our fact or fail on the poison",
             lambda: ref.log_tail(60))
    have = {f["id"]: f for f in ref_facts(ref)}
    log_text = ref.log_path.read_text(errors="replace")
    assert good["id"] in have, f"the reference stalled on our feed ({evidence}):\n{ref.log_tail(60)}"
    assert evidence not in log_text
    assert not [line for line in log_text.splitlines() if "Unexpected error in pull loop" in line]
    if kind == "hlc-31-days-old":
        # Served with "hlc": null, the reference stamps its own HLC and ingests it.
        assert poison["id"] in have and have[poison["id"]]["cid"] == poison["cid"]
    else:
        assert poison["id"] not in have  # instruction facts stay home by default


def test_a_reference_peer_is_not_notified_again_after_its_404(reference_venv, tmp_path):
    """``--notify-peers`` next to a reference node: the reference has no notification
    endpoint, answers 404 once, is left alone, and still takes our facts by its own pull."""
    ref = ReferenceNode(tmp_path / "ref", venv=reference_venv, pull_interval_s=PULL_INTERVAL_S)
    ours = None
    try:
        ref.start()
        ref.put_manifest()
        ours = RunningNode(tmp_path / "ours", "ours", args=("--notify-peers", "--access-log"))
        link_ref_and_ours(ref, ours, tmp_path)

        def sent(outcome: str) -> float:
            text = httpx.get(ours.url + "/metrics", timeout=30).text
            line = f'stigmem_notifications_sent_total{{outcome="{outcome}"}} '
            return next(float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line))

        (first,) = ours_post_facts(ours, [{"entity": "stigmem://interop/notify/one", "relation": "memory:note",
                                           "value": {"type": "string", "v": "one"}, "source": "agent:interop",
                                           "scope": "public"}])
        wait_for(lambda: sent("unsupported") == 1, ARRIVAL_TIMEOUT_S, "the reference's 404",
                 lambda: ours.log())
        (second,) = ours_post_facts(ours, [{"entity": "stigmem://interop/notify/two", "relation": "memory:note",
                                            "value": {"type": "string", "v": "two"}, "source": "agent:interop",
                                            "scope": "public"}])
        wanted = {first["id"], second["id"]}
        wait_for(lambda: wanted <= {f["id"] for f in ref_facts(ref)}, ARRIVAL_TIMEOUT_S,
                 "the reference's pull loop to take both facts", lambda: ref.log_tail(60))
        assert sent("unsupported") == 1 and sent("delivered") == 0 and sent("failed") == 0
    finally:
        if ours is not None:
            ours.stop()
        ref.stop()
