"""Pulled pages checked in worker processes (``replication.checker``, ``check_worker``): the
same checked page as the serial check, in the same order; a worker that dies, cannot start or
hangs changes nothing but where the check runs; a real pull uses them, several pages at once."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
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
from stigmem_node.check_worker import check_request, decode_answer, decode_request, encode_request
from stigmem_node.encoding import b64url_encode
from stigmem_node.errors import InternalValidationError, ValidationError
from stigmem_node.hlc import HLC
from stigmem_node.page_check import PagePolicy, check_page, check_serially, verify_batch
from stigmem_node.replication import PullOptions
from stigmem_node.replication.checker import InlineChecker, ProcessChecker
from stigmem_node.replication.subscriber import FIRST_PAGE_LIMIT
from stigmem_node.replication.transport import Page, parse_page
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
POLICY = PagePolicy(NODE, ("company", "public"))


def as_page(entries: list[Any]) -> Page:
    """``entries`` as a peer sends them: a v2 page's bytes."""
    body = json.dumps({"v": 2, "facts": entries, "cursor": "1", "has_more": False}).encode()
    return parse_page(body, max(1, len(entries)))


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


def serial_and_parallel(page: list[Any], keys: list, checker: Any) -> tuple[Any, Any]:
    serial = check_serially(POLICY, page, keys)
    return serial, asyncio.run(checker.check(POLICY, [k.public_bytes_raw() for k in keys], as_page(page)))


def summary(checked: Any) -> tuple[list[str], list[tuple[str | None, str, str | None]]]:
    return ([e.fact.id for e in checked.entries],
            [(fid, exc.code, getattr(exc, "field", None)) for fid, exc in checked.rejections])


@pytest.fixture(scope="module")
def worker():
    checker = ProcessChecker(workers=2)
    yield checker
    checker.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=0, max_size=8),
       keys=st.sampled_from(["right", "both", "wrong", "none"]))
def test_the_worker_rejects_exactly_what_the_serial_check_rejects(worker, choice: list[str], keys: str) -> None:
    page = [MUTATIONS[name](GOOD[i]) for i, name in enumerate(choice)]
    key_set = {"right": [KEY], "both": [OTHER, KEY], "wrong": [OTHER], "none": []}[keys]
    serial, parallel = serial_and_parallel(page, [k.public_key() for k in key_set], worker)
    assert summary(parallel) == summary(serial)
    assert [e.fact for e in parallel.entries] == [e.fact for e in serial.entries]  # the facts themselves
    if keys == "right":
        assert len(serial.entries) == choice.count("none"), summary(serial)


def test_every_mutation_is_refused_with_its_own_code(worker) -> None:
    """The table above covers each way a fact is refused, at its index, in page order."""
    page = [MUTATIONS[name](GOOD[i % 8]) for i, name in enumerate(sorted(MUTATIONS))]
    before = worker.pages
    serial, parallel = serial_and_parallel(page, [KEY.public_key()], worker)
    assert summary(parallel) == summary(serial)
    codes = {code for _, code, _ in summary(serial)[1]}
    assert {"invalid_origin_signature", "cid_mismatch", "scope_not_granted", "origin_not_sender"} <= codes
    assert worker.pages == before + 1
    inline = asyncio.run(InlineChecker().check(POLICY, [raw(KEY)], as_page(page)))
    assert summary(inline) == summary(serial)


def test_instructions_pass_only_a_policy_that_takes_them(worker) -> None:
    inp = fm.validate_new_fact({"entity": "instruction:e", "relation": "r", "value": {"type": "string", "v": "do it"},
                                "source": "test_checker", "scope": "public"})
    fact = fm.new_fact(inp, origin_node_id=NODE, hlc=HLC().tick(), timestamp=NOW, fact_id=str(uuid.UUID(int=99)))
    origin = om.origin_for(fact, node_id=NODE, entity_uri="http://127.0.0.1:9")
    page = as_page([om.pull_entry(fact, origin, om.sign_fact_origin(KEY, fact, origin))])
    refused = asyncio.run(worker.check(POLICY, [raw(KEY)], page))
    assert [exc.code for _, exc in refused.rejections] == ["instruction_not_accepted"]
    taken = asyncio.run(worker.check(PagePolicy(NODE, ("public",), instructions=True), [raw(KEY)], page))
    assert [e.fact.id for e in taken.entries] == [fact.id] and not taken.rejections


def test_pages_are_checked_in_several_workers_at_once(worker) -> None:
    pages = [as_page([entry(100 * p + i) for i in range(20)]) for p in range(6)]

    async def all_at_once() -> list[Any]:
        return list(await asyncio.gather(*(worker.check(POLICY, [raw(KEY)], page) for page in pages)))

    checked = asyncio.run(all_at_once())
    assert [[e.fact.entity for e in c.entries] for c in checked] == \
        [[f"e:{100 * p + i}" for i in range(20)] for p in range(6)]
    assert len({w.proc.pid for w in worker._workers if w.proc is not None}) == 2


def test_the_worker_protocol_round_trips_and_refuses_a_malformed_request() -> None:
    page = as_page(GOOD[:3])
    request = encode_request(POLICY, [raw(OTHER), raw(KEY)], page.raw)
    assert decode_request(request[4:]) == (POLICY, [raw(OTHER), raw(KEY)], page.raw)
    answer = decode_answer(check_request(request[4:]))
    assert summary(answer) == summary(check_page(POLICY, GOOD[:3], [raw(KEY)]))
    assert len(answer.entries) == 3
    for bad in (b"", request[4:5], b"\x01" + b"k" * 31, b"\x00\x00\x05{}", b"\x00\x00\x02[]"):
        with pytest.raises(ValueError):
            decode_request(bad)
    with pytest.raises(ValueError):
        encode_request(POLICY, [b"short"], page.raw)
    with pytest.raises(ValueError):
        decode_answer(pickle.dumps(["not", "a", "page"]))
    signed = KEY.sign(b"m") + b"m"
    assert verify_batch([raw(OTHER), raw(KEY)], [signed, b"", b"x" * 64, signed[:-1] + b"n"]) == bytes([1, 0, 0, 0])
    assert verify_batch([], [signed]) == b"\x00"


def test_a_rejection_comes_back_from_the_worker_whole() -> None:
    """Errors cross the process boundary with their class, code, message and field."""
    for error in (ValidationError("cid_mismatch", "cid does not match", field="facts[3].cid"),
                  InternalValidationError(message="could not validate", field="facts[0].value")):
        back = pickle.loads(pickle.dumps(error))  # noqa: S301 - what the test itself pickled
        assert type(back) is type(error) and str(back) == str(error)
        assert (back.code, back.message, back.field) == (error.code, error.message, error.field)


def test_a_worker_that_died_is_started_again_for_the_next_page() -> None:
    checker = ProcessChecker(workers=1)
    page = as_page(GOOD[:2])
    try:
        assert len(asyncio.run(checker.check(POLICY, [raw(KEY)], page)).entries) == 2 and checker.pages == 1
        proc = checker._workers[0].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # the worker this test started
        proc.wait()
        assert len(asyncio.run(checker.check(POLICY, [raw(OTHER)], page)).entries) == 0
        again = checker._workers[0].proc
        assert checker.pages == 2 and again is not None and again.pid != proc.pid
    finally:
        checker.close()
    assert proc.returncode is not None and checker._workers[0].proc is None


def test_a_worker_that_fails_a_page_leaves_every_page_to_this_process(caplog) -> None:
    """A worker that ends without answering (here: a program that exits at once): the page,
    and every later one, is checked in this process, with the same result; one warning."""
    checker = ProcessChecker(workers=2, python="/bin/true")
    page = as_page(GOOD[:2])
    with caplog.at_level(logging.WARNING, logger="stigmem_node.replication"):
        assert len(asyncio.run(checker.check(POLICY, [raw(KEY)], page)).entries) == 2
        assert len(asyncio.run(checker.check(POLICY, [raw(OTHER)], page)).entries) == 0
    assert checker.pages == 0
    assert sum("check worker unavailable" in r.getMessage() for r in caplog.records) == 1
    checker.close()


def test_a_worker_that_cannot_start_changes_no_result(tmp_path: Path) -> None:
    checker = ProcessChecker(python=str(tmp_path / "no-such-python"))
    page = as_page([GOOD[0], _flip_sig(GOOD[1])])
    checked = asyncio.run(checker.check(POLICY, [raw(KEY)], page))
    assert summary(checked) == summary(check_serially(POLICY, page.facts, [KEY.public_key()]))
    assert checker.pages == 0
    checker.close()


def test_a_closed_checker_checks_here() -> None:
    checker = ProcessChecker(workers=1)
    checker.close()
    assert len(asyncio.run(checker.check(POLICY, [raw(KEY)], as_page(GOOD[:2]))).entries) == 2
    assert checker.pages == 0 and checker._workers[0].proc is None


def federated_with_workers(nodes: Any, batches: int, size: int) -> tuple[Any, Any]:
    """Nodes A and B of ``nodes`` (the pair fixture), each the other's approved peer; A with
    ``batches`` batches of ``size`` public facts; B checking pulled pages in two worker
    processes, whatever this machine's cores."""
    a, b, _ = nodes
    peer_up(a, b)
    peer_up(b, a)
    for batch in range(batches):
        a.facts.assert_many(a.facts.validate_batch([
            {"entity": f"e:{batch}-{i}", "relation": "r", "value": {"type": "string", "v": str(i)},
             "source": "test_checker", "scope": "public"} for i in range(size)]))
    b.checker.close()
    b.checker = ProcessChecker(workers=2)
    return a, b


def test_a_pull_checks_its_pages_in_the_workers_and_a_stopped_pull_drops_the_work_ahead(pair) -> None:  # noqa: F811
    a, b = federated_with_workers(pair, 3, 400)

    # The pull stops as soon as its first page is stored (here: what it reports the page to
    # fails): pages fetched and checked ahead are dropped, and the next pass takes them, each
    # fact once.
    class Stop(Exception):
        pass

    def stop(progress: Any) -> None:
        raise Stop()

    async def stopped_after_one_page() -> None:
        sub = b.subscriber(PullOptions(page_limit=300))
        peer = (await sub.active_peers())[0]
        async with sub.client() as client:
            result = await sub.pull_peer(client, peer, stop)
        assert not result.ok and result.error_code == "internal_error" and result.pages == 1

    asyncio.run(stopped_after_one_page())
    first = FIRST_PAGE_LIMIT  # a pass's first page is the small one
    assert b.store.db.one("SELECT COUNT(*) FROM facts WHERE received_from IS NOT NULL")[0] == first
    second = asyncio.run(b.subscriber().run_pass())
    assert second.ok and second.totals()["new"] == 1200 - first and second.totals()["duplicates"] == 0, \
        second.as_dict()
    assert b.checker.pages >= 3
    stored = b.store.db.all("SELECT id FROM facts WHERE received_from IS NOT NULL")
    assert sorted(r[0] for r in stored) == sorted(r[0] for r in a.store.db.all("SELECT id FROM facts"))


def test_a_worker_that_does_not_answer_in_time_is_stopped_and_the_page_checked_here(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck-python"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")  # takes the request and never answers
    stuck.chmod(0o700)
    checker = ProcessChecker(workers=1, python=str(stuck), timeout_s=0.3)
    assert len(asyncio.run(checker.check(POLICY, [raw(KEY)], as_page(GOOD[:2]))).entries) == 2
    assert checker.pages == 0 and checker._workers[0].proc is None  # the stuck worker is gone
    checker.close()


def test_a_long_pull_holds_a_bounded_number_of_checked_pages(pair) -> None:  # noqa: F811
    """Pages checked and stored are let go: however many pages a pull takes, only those
    ahead of the one being stored are held (the memory of a sync of a million facts)."""
    import gc

    from stigmem_node.page_check import CheckedPage

    a, b = federated_with_workers(pair, 3, 500)
    held: list[int] = []

    def count(progress: Any) -> None:
        gc.collect()  # only what is still reachable
        held.append(sum(1 for o in gc.get_objects() if type(o) is CheckedPage))

    async def pull() -> Any:
        sub = b.subscriber(PullOptions(page_limit=50))
        peer = (await sub.active_peers())[0]
        async with sub.client() as client:
            return await sub.pull_peer(client, peer, count)

    result = asyncio.run(pull())
    assert result.ok and result.new == 1500 and result.pages == len(held) > 25
    # The page being stored, those checked and queued (as many as the workers), one whose
    # fetch waits for room, and one a worker may still hand back: never more, however long
    # the pull (a pull that kept them held 30 here).
    assert max(held) <= b.checker.parallel + 3, held


def test_the_number_of_check_workers_is_a_setting(tmp_path: Path) -> None:
    from stigmem_node.config import Settings, from_env
    from stigmem_node.errors import ConfigError
    from stigmem_node.node import Node

    assert from_env({"STIGMEM_CHECK_WORKERS": "0"}).check_workers == 0
    assert from_env({}).check_workers is None
    for bad in ("-1", "65", "two"):
        with pytest.raises(ConfigError):
            from_env({"STIGMEM_CHECK_WORKERS": bad})
    for workers, kind, parallel in ((0, InlineChecker, 1), (3, ProcessChecker, 3)):
        node = Node(Settings(db_path=tmp_path / f"n{workers}.db", check_workers=workers), create=True)
        try:
            assert type(node.checker) is kind and node.checker.parallel == parallel
        finally:
            node.close()


def test_a_check_that_failed_in_a_worker_is_logged_here(caplog) -> None:
    """A worker logs where nobody reads: a fact its checks could not judge (a bug, refused as
    internal_validation_error) is logged by the node that reads the answer."""
    from stigmem_node.page_check import CheckedPage

    checked = CheckedPage([], [("fact-1", InternalValidationError(message="could not validate", field="facts[0]")),
                               ("fact-2", ValidationError("cid_mismatch", "no", field="facts[1].cid"))])
    with caplog.at_level(logging.ERROR, logger="stigmem_node.replication"):
        ProcessChecker._log_internal_errors(checked)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "fact-1" in messages[0] and "facts[0]" in messages[0]
