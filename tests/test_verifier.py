"""Pulled facts' signatures checked in a worker process (``replication.verifier``,
``verify_worker``): the same verdicts as the serial check, in the same order; a worker that
dies or cannot start changes nothing but where the check runs; a real pull uses it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem_node import facts as fm
from stigmem_node import origin as om
from stigmem_node.encoding import b64url_encode
from stigmem_node.hlc import HLC
from stigmem_node.replication import PullOptions
from stigmem_node.replication.ingest import Ingest
from stigmem_node.replication.verifier import InlineVerifier, ProcessVerifier
from stigmem_node.store.peers import PeerRecord
from stigmem_node.verify_worker import decode_request, encode_request, verify_batch
from tests.test_wiring import pair, peer_up  # noqa: F401 - the two-node fixture

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
NODE = "stigmem:node:origin-under-test"
NOW = datetime(2026, 11, 30, tzinfo=UTC).isoformat().replace("+00:00", "Z")


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def entry(i: int, *, scope: str = "public", key: Ed25519PrivateKey = KEY, node: str = NODE) -> dict[str, Any]:
    inp = fm.validate_new_fact({"entity": f"e:{i}", "relation": "r", "value": {"type": "string", "v": f"v{i}"},
                                "source": "test_verifier", "scope": scope})
    fact = fm.new_fact(inp, origin_node_id=node, hlc=HLC().tick(), timestamp=NOW, fact_id=str(uuid.UUID(int=i + 1)))
    origin = om.origin_for(fact, node_id=node, entity_uri="http://127.0.0.1:9")
    return om.pull_entry(fact, origin, om.sign_fact_origin(key, fact, origin))


GOOD = [entry(i) for i in range(8)]
PEER = PeerRecord(str(uuid.uuid4()), NODE, "http://127.0.0.1:9", b64url_encode(raw(KEY)), ("company", "public"), {},
                  NOW, "active", None, NOW, NOW, "test", NOW)


def _flip_sig(e: dict) -> Any:
    sig = bytearray(e["origin_sig"].encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    return {**e, "origin_sig": sig.decode()}


MUTATIONS = {
    "none": lambda e: e,
    "flipped signature": _flip_sig,
    "signature not text": lambda e: {**e, "origin_sig": 12},
    "signature not base64url": lambda e: {**e, "origin_sig": "!!!!"},
    "short signature": lambda e: {**e, "origin_sig": b64url_encode(b"x" * 63)},
    "value changed": lambda e: {**e, "fact": {**e["fact"], "value": {**e["fact"]["value"], "v": "other"}}},
    "scope not granted": lambda e: entry(int(e["fact"]["entity"][2:]) + 100, scope="team"),
    "another origin": lambda e: entry(int(e["fact"]["entity"][2:]) + 200, node="stigmem:node:someone-else"),
    "signed by another key": lambda e: entry(int(e["fact"]["entity"][2:]) + 300, key=OTHER),
    "no entity uri": lambda e: {**e, "origin": {**e["origin"], "entity_uri": ""}},
    "not an object": lambda e: [e],
    "no fact": lambda e: {k: v for k, v in e.items() if k != "fact"},
}


def serial_and_parallel(page: list[Any], keys: list, verifier: Any) -> tuple[Any, Any]:
    ingest = Ingest(None, None, None, HLC)  # type: ignore[arg-type] - checking touches no storage
    serial = ingest.check_page(PEER, page, keys)
    prepared = ingest.prepare_page(PEER, page)
    verdicts = asyncio.run(verifier.verify([k.public_bytes_raw() for k in keys], prepared.signed))
    return serial, prepared.finish(verdicts)


def summary(checked: Any) -> tuple[list[str], list[tuple[str | None, str, str | None]]]:
    return ([e.fact.id for e in checked.entries],
            [(fid, exc.code, getattr(exc, "field", None)) for fid, exc in checked.rejections])


@pytest.fixture(scope="module")
def worker():
    verifier = ProcessVerifier()
    yield verifier
    verifier.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=0, max_size=8),
       keys=st.sampled_from(["right", "both", "wrong", "none"]))
def test_the_worker_rejects_exactly_what_the_serial_check_rejects(worker, choice: list[str], keys: str) -> None:
    page = [MUTATIONS[name](GOOD[i]) for i, name in enumerate(choice)]
    key_set = {"right": [KEY], "both": [OTHER, KEY], "wrong": [OTHER], "none": []}[keys]
    serial, parallel = serial_and_parallel(page, [k.public_key() for k in key_set], worker)
    assert summary(parallel) == summary(serial)
    if keys == "right":
        assert len(serial.entries) == choice.count("none"), summary(serial)


def test_every_mutation_is_refused_with_its_own_code(worker) -> None:
    """The table above covers each way a fact is refused, at its index, in page order."""
    page = [MUTATIONS[name](GOOD[i % 8]) for i, name in enumerate(sorted(MUTATIONS))]
    serial, parallel = serial_and_parallel(page, [KEY.public_key()], worker)
    assert summary(parallel) == summary(serial)
    codes = {code for _, code, _ in summary(serial)[1]}
    assert {"invalid_origin_signature", "cid_mismatch", "scope_not_granted", "origin_not_sender"} <= codes
    assert worker.batches > 0


def test_the_worker_protocol_round_trips_and_refuses_a_malformed_request() -> None:
    signed = KEY.sign(b"m") + b"m"
    request = encode_request([raw(OTHER), raw(KEY)], [signed, b"", b"x" * 64, signed[:-1] + b"n"])
    keys, items = decode_request(request[4:])
    assert keys == [raw(OTHER), raw(KEY)] and items == [signed, b"", b"x" * 64, signed[:-1] + b"n"]
    assert verify_batch(keys, items) == bytes([1, 0, 0, 0])
    assert verify_batch([], [signed]) == b"\x00"
    for bad in (b"", request[4:-1], request[4:] + b"\x00", b"\x01" + b"k" * 31):
        with pytest.raises((ValueError, IndexError)):
            decode_request(bad)


def test_a_worker_that_died_is_started_again_for_the_next_batch() -> None:
    verifier = ProcessVerifier()
    signed = [KEY.sign(b"a") + b"a", OTHER.sign(b"b") + b"b"]
    try:
        assert asyncio.run(verifier.verify([raw(KEY)], signed)) == b"\x01\x00" and verifier.batches == 1
        proc = verifier._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # the worker this test started
        proc.wait()
        assert asyncio.run(verifier.verify([raw(OTHER)], signed)) == b"\x00\x01"
        assert verifier.batches == 2 and verifier._proc is not None and verifier._proc.pid != proc.pid
    finally:
        verifier.close()
    assert proc.returncode is not None


def test_a_worker_that_fails_a_batch_leaves_every_batch_to_this_process(caplog) -> None:
    """A worker that ends without answering (here: a program that exits at once): the batch,
    and every later one, is checked in this process, with the same verdicts; one warning."""
    verifier = ProcessVerifier(python="/bin/true")
    signed = [KEY.sign(b"a") + b"a", OTHER.sign(b"b") + b"b"]
    with caplog.at_level(logging.WARNING, logger="stigmem_node.replication"):
        assert asyncio.run(verifier.verify([raw(KEY)], signed)) == b"\x01\x00"
        assert asyncio.run(verifier.verify([raw(OTHER), raw(KEY)], signed)) == b"\x01\x01"
    assert verifier.batches == 0
    assert sum("signature worker unavailable" in r.getMessage() for r in caplog.records) == 1
    verifier.close()


def test_a_worker_that_cannot_start_changes_no_verdict(tmp_path: Path) -> None:
    verifier = ProcessVerifier(python=str(tmp_path / "no-such-python"))
    signed = [KEY.sign(b"a") + b"a", b"z" * 70]
    assert asyncio.run(verifier.verify([raw(KEY)], signed)) == b"\x01\x00"
    assert asyncio.run(InlineVerifier().verify([raw(KEY)], signed)) == b"\x01\x00"
    assert verifier.batches == 0
    verifier.close()


def test_a_pull_checks_its_pages_in_the_worker_and_drops_pages_fetched_ahead(pair) -> None:  # noqa: F811
    a, b, _ = pair
    peer_up(a, b)
    peer_up(b, a)
    for batch in range(3):
        a.facts.assert_many(a.facts.validate_batch([
            {"entity": f"e:{batch}-{i}", "relation": "r", "value": {"type": "string", "v": str(i)},
             "source": "test_verifier", "scope": "public"} for i in range(400)]))
    b.verifier.close()
    b.verifier = ProcessVerifier()  # whatever this machine's cores: the worker

    # Two pages a pass: the third, fetched and checked ahead, is dropped, and the next pass takes it.
    first = asyncio.run(b.subscriber(PullOptions(max_pages=2)).run_pass())
    assert first.ok and first.totals()["new"] == 1000, first.as_dict()
    second = asyncio.run(b.subscriber().run_pass())
    assert second.ok and second.totals()["new"] == 200 and second.totals()["duplicates"] == 0, second.as_dict()
    assert b.verifier.batches >= 3
    stored = b.store.db.all("SELECT id FROM facts WHERE received_from IS NOT NULL")
    assert sorted(r[0] for r in stored) == sorted(r[0] for r in a.store.db.all("SELECT id FROM facts"))


def test_a_worker_that_does_not_answer_in_time_is_stopped_and_the_batch_checked_here(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck-python"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")  # takes the request and never answers
    stuck.chmod(0o700)
    verifier = ProcessVerifier(python=str(stuck), timeout_s=0.3)
    signed = [KEY.sign(b"a") + b"a", OTHER.sign(b"b") + b"b"]
    assert asyncio.run(verifier.verify([raw(KEY)], signed)) == b"\x01\x00"
    assert verifier.batches == 0 and verifier._proc is None  # the stuck worker is gone
    verifier.close()
