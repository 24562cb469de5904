"""The long-poll pull: GET /v1/federation/facts?...&wait=S (stigmem_node.new_facts).

A caught-up subscriber's request waits until a permitted fact beyond its cursor commits, or
answers the empty page when S runs out.  One token per request, spent once.  Requests
without ``wait`` are unchanged.  Both engines.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.test_pull import PULL, Fed, _federation, assert_error, fact, new_addr, nonce_row
from tests.test_replication import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def fed(start_node) -> Iterator[Fed]:
    yield from _federation(start_node("a"), start_node)


def wait_path(cursor: str, wait: int | str, **more: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"cursor": cursor, "limit": "100", **more, "wait": str(wait)}.items())
    return f"{PULL}?{query}"


def long_poll(fed: Fed, path: str, token: str, out: dict, addr: str = "127.0.0.1") -> threading.Thread:
    """GET ``path`` in a thread of its own; the response and when it came land in ``out``."""
    def run() -> None:
        with httpx.Client(base_url=fed.a.url, timeout=60, transport=httpx.HTTPTransport(local_address=addr)) as c:
            out["response"] = c.get(path, headers={"Authorization": f"Bearer {token}"})
            out["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def waiting_at_a(fed: Fed) -> int:
    return fed.a.node.new_facts.waiting


def test_a_waiting_pull_answers_once_a_permitted_fact_commits_and_the_token_stays_spent(fed: Fed):
    cursor = fed.end_cursor()
    nonce = str(uuid.uuid4())
    path = wait_path(cursor, 30)
    token = fed.mint(path, nonce=nonce)
    out: dict = {}
    t = long_poll(fed, path, token, out)
    wait_for(lambda: waiting_at_a(fed) == 1, 60, what="the request to wait")
    assert nonce_row(fed.a.target, nonce) is not None  # spent before the wait, not after
    # A fact B may not read (local never leaves) wakes the request for nothing: it goes on waiting.
    fed.add_facts([fact("urn:lp:local", "local")])
    time.sleep(0.5)
    assert "response" not in out and waiting_at_a(fed) == 1
    asserted = time.monotonic()
    (new,) = fed.add_facts([fact("urn:lp:public", "public")])
    t.join(timeout=60)
    res = out["response"]
    assert res.status_code == 200, res.text
    body = res.json()
    assert [e["fact"]["id"] for e in body["facts"]] == [new["id"]]
    assert out["at"] >= asserted
    assert int(body["cursor"]) > int(cursor)
    assert waiting_at_a(fed) == 0
    # The same token again: refused as a replay, never a second wait.
    assert_error(fed.get(path, token), 401, "nonce_already_seen")


def test_a_waiting_pull_answers_the_empty_page_when_its_time_runs_out(fed: Fed):
    cursor = fed.end_cursor()
    path = wait_path(cursor, 1)
    res = fed.get(path, fed.mint(path))
    assert res.status_code == 200, res.text
    assert res.json() == {"v": 2, "facts": [], "cursor": cursor, "has_more": False}
    assert waiting_at_a(fed) == 0


def test_a_pull_with_facts_waiting_answers_at_once_and_without_wait_nothing_changes(fed: Fed):
    cursor = fed.end_cursor()
    (new,) = fed.add_facts([fact("urn:lp:ready", "company")])
    path = wait_path(cursor, 30)
    res = fed.get(path, fed.mint(path))  # a fact is already there: no wait at all
    assert [e["fact"]["id"] for e in res.json()["facts"]] == [new["id"]]
    # The same page without wait, as a reference subscriber asks: byte for byte the same
    # shape, and an empty page at once when caught up.
    plain = f"{PULL}?cursor={cursor}&limit=100"
    assert fed.get(plain, fed.mint(plain)).json() == res.json()
    end = res.json()["cursor"]
    plain_end = f"{PULL}?cursor={end}&limit=100"
    assert fed.get(plain_end, fed.mint(plain_end)).json() == {"v": 2, "facts": [], "cursor": end, "has_more": False}


def test_a_fact_committed_by_another_process_wakes_the_wait(fed: Fed):
    """The CLI writes into the same database: the head is re-read while requests wait."""
    cursor = fed.end_cursor()
    path = wait_path(cursor, 30)
    out: dict = {}
    t = long_poll(fed, path, fed.mint(path), out)
    wait_for(lambda: waiting_at_a(fed) == 1, 60, what="the request to wait")
    added = fed.a.cli("facts", "add", "urn:lp:cli", "test:rel", "from the cli", "--scope", "public", "--json")
    assert added.returncode == 0, added.stderr
    t.join(timeout=60)
    body = out["response"].json()
    assert [e["fact"]["entity"] for e in body["facts"]] == ["urn:lp:cli"]


def test_waiting_is_bounded_per_peer_and_bad_wait_values_are_refused(fed: Fed):
    cursor = fed.end_cursor()
    outs: list[dict] = []
    threads = []
    for _ in range(fed.a.node.settings.long_poll_per_peer):
        path = wait_path(cursor, 30)
        out: dict = {}
        threads.append(long_poll(fed, path, fed.mint(path), out))
        outs.append(out)
    wait_for(lambda: waiting_at_a(fed) == fed.a.node.settings.long_poll_per_peer, 60, what="every request to wait")
    path = wait_path(cursor, 30)
    res = fed.get(path, fed.mint(path))
    assert_error(res, 429, "too_many_waiting")
    assert res.headers["retry-after"] == "1"
    # Another peer (C) is not held back by B's waits.
    c_path = wait_path("", 1)
    assert fed.get(c_path, fed.mint(c_path, scopes=("public",), as_c=True)).status_code == 200
    fed.add_facts([fact("urn:lp:wake", "public")])
    for t in threads:
        t.join(timeout=60)
    assert all(o["response"].status_code == 200 and len(o["response"].json()["facts"]) == 1 for o in outs)
    for bad in ("31", "-1", "1.5", "x", ""):
        p = wait_path(cursor, bad)
        assert assert_error(fed.get(p, fed.mint(p)), 422, "invalid_request")["field"] == "wait"


def test_a_stopping_node_answers_its_waiting_requests_at_once(fed: Fed):
    cursor = fed.end_cursor()
    path = wait_path(cursor, 30)
    out: dict = {}
    t = long_poll(fed, path, fed.mint(path), out, addr=new_addr())
    wait_for(lambda: waiting_at_a(fed) == 1, 60, what="the request to wait")
    fed.a.stop()
    t.join(timeout=60)
    assert out["response"].status_code == 200
    assert out["response"].json()["facts"] == []
