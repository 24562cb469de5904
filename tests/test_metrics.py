"""GET /metrics (stigmem_node.metrics, stigmem_node.http.metrics), scraped from real nodes.

Real nodes served on 127.0.0.1 federate and pull through the command line; the scrape is
parsed with prometheus_client's own parser.  Per-peer series in both directions, the HTTP,
token, nonce, fact, audit and lane series, the absence of every secret in play, and who may
scrape.  Both engines.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stigmem_node.config import from_env
from stigmem_node.encoding import b64url_encode
from stigmem_node.errors import ConfigError
from stigmem_node.offload import Lanes
from tests.engines import refusing_connections
from tests.test_replication import fact, federate, node_id, post_facts, pull, wait_for

PULL_ROUTE = "/v1/federation/facts"


def scrape(n, headers: dict[str, str] | None = None) -> str:
    res = httpx.get(n.url + "/metrics", headers=headers or {}, timeout=30)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain; version=")
    return res.text


def scrape_up(n) -> str:
    """A scrape that read the database (stigmem_database_up 1)."""
    text = scrape(n)
    assert value(text, "stigmem_database_up") == 1, "the scrape could not read the database"
    return text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def private_key_texts(n) -> list[str]:
    raw = n.node.identity.private_key.private_bytes_raw()
    return [b64url_encode(raw), raw.hex()]


def test_scrape_during_a_federation_shows_both_directions_and_no_secret(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    a_id, b_id = node_id(a), node_id(b)
    post_facts(a, [fact(f"urn:metrics:{i}", "public") for i in range(3)])
    post_facts(a, [fact("urn:metrics:home", "local")])
    before = time.time()
    code, summary = pull(b)
    after = time.time()
    assert code == 0, summary

    # B, the subscriber of A.
    text_b = scrape_up(b)
    assert value(text_b, "stigmem_replication_facts_ingested_total", peer=a_id) == 3
    assert value(text_b, "stigmem_replication_facts_rejected_total", peer=a_id) == 0
    assert value(text_b, "stigmem_replication_consecutive_failures", peer=a_id) == 0
    success = value(text_b, "stigmem_replication_last_success_timestamp_seconds", peer=a_id)
    attempt = value(text_b, "stigmem_replication_last_attempt_timestamp_seconds", peer=a_id)
    assert success is not None and attempt is not None
    assert before - 1 <= attempt <= success <= after + 1  # RFC 3339 texts to the millisecond
    lag = value(text_b, "stigmem_replication_lag_seconds", peer=a_id)
    assert lag is not None and lag >= 0
    assert value(text_b, "stigmem_facts_stored", origin="received") == 3
    assert value(text_b, "stigmem_facts_stored", origin="local") == 0
    assert value(text_b, "stigmem_peers", status="active") == 1

    # A, the publisher: its notes of B's pulls are written within a couple of seconds.
    wait_for(lambda: value(scrape_up(a), "stigmem_peer_last_pull_timestamp_seconds", peer=b_id) is not None,
             timeout=30, what="B's pull in A's metrics")
    text_a = scrape_up(a)
    assert before - 1 <= value(text_a, "stigmem_peer_last_pull_timestamp_seconds", peer=b_id) <= time.time() + 1
    assert value(text_a, "stigmem_peer_cursor_behind_facts", peer=b_id) == 0
    assert value(text_a, "stigmem_peer_facts_served_total", peer=b_id) == 3
    assert value(text_a, "stigmem_facts_stored", origin="local") == 4
    assert value(text_a, "stigmem_facts_stored", origin="received") == 0
    assert value(text_a, "stigmem_http_requests_total", route=PULL_ROUTE, method="GET", status="200") >= 1
    assert value(text_a, "stigmem_http_request_duration_seconds_count", route=PULL_ROUTE, method="GET") >= 1
    accepted = value(text_a, "stigmem_nonces_accepted_total")
    assert accepted >= 1
    assert value(text_a, "stigmem_nonce_cache_rows") >= accepted
    assert value(text_a, "stigmem_audit_rows") >= 2  # at least the registration and the approval
    assert value(text_a, "stigmem_database_up") == 1
    for lane in ("read", "write"):
        assert value(text_a, "stigmem_db_operation_duration_seconds_count", lane=lane) > 0
    assert value(text_a, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples(text_a))  # the platform collector
    assert any(name == "python_gc_collections_total" for name, _ in samples(text_a))  # the GC collector

    # More facts at A: B's cursor is behind by exactly those it may read (not the local one).
    post_facts(a, [fact(f"urn:metrics:more:{i}", "public") for i in range(2)])
    post_facts(a, [fact("urn:metrics:home2", "local")])
    assert value(scrape_up(a), "stigmem_peer_cursor_behind_facts", peer=b_id) == 2

    # Token rejections by code, and nonces: a token used twice is a replay the second time.
    token = b.node.mint_peer_token(a_id, ["public"])
    with httpx.Client(base_url=a.url, timeout=10) as c:
        assert c.get(PULL_ROUTE, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        replay = c.get(PULL_ROUTE, headers={"Authorization": f"Bearer {token}"})
        assert replay.status_code == 401 and replay.json()["error"] == "nonce_already_seen"
        bad = c.get(PULL_ROUTE, headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401 and bad.json()["error"] == "malformed_token"
        none = c.get(PULL_ROUTE)
        assert none.json()["error"] == "peer_token_required"
    text_a = scrape_up(a)
    assert value(text_a, "stigmem_peer_token_rejections_total", code="nonce_already_seen") == 1
    assert value(text_a, "stigmem_peer_token_rejections_total", code="malformed_token") == 1
    assert value(text_a, "stigmem_peer_token_rejections_total", code="peer_token_required") == 1
    assert value(text_a, "stigmem_nonces_accepted_total") == accepted + 1
    assert value(text_a, "stigmem_http_requests_total", route=PULL_ROUTE, method="GET", status="401") == 3

    # No secret in play appears in either scrape.
    nonce = __import__("jwt").decode(token, options={"verify_signature": False})["nonce"]
    secrets = [a.api_key, b.api_key, token, nonce, *private_key_texts(a), *private_key_texts(b)]
    for n in (a, b):
        pepper = n.node.settings.pepper_path.read_text().split()
        assert pepper
        secrets.extend(line.split(":", 1)[-1] for line in pepper)
    secrets.extend(key.split("_", 2)[-1] for key in (a.api_key, b.api_key))  # each key's secret part alone (stgm_<id>_<secret>; the secret may hold "_")
    for text in (scrape_up(a), scrape_up(b)):
        for secret in secrets:
            assert secret and secret not in text


def test_consecutive_failures_rise_while_the_peer_is_down_and_lag_grows(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    a_id = node_id(a)
    assert pull(b)[0] == 0
    text = scrape_up(b)
    success = value(text, "stigmem_replication_last_success_timestamp_seconds", peer=a_id)
    assert value(text, "stigmem_replication_consecutive_failures", peer=a_id) == 0
    a.stop()
    once = {"STIGMEM_PULL_ATTEMPTS": "1"}
    for failures in (1, 2):
        code, _ = pull(b, env=once)
        assert code != 0
        text = scrape_up(b)
        assert value(text, "stigmem_replication_consecutive_failures", peer=a_id) == failures
        assert value(text, "stigmem_replication_last_success_timestamp_seconds", peer=a_id) == success
        assert value(text, "stigmem_replication_last_attempt_timestamp_seconds", peer=a_id) >= success
        assert value(text, "stigmem_replication_lag_seconds", peer=a_id) >= 0


PROXIED = {"STIGMEM_TRUSTED_PROXIES": "127.0.0.1", "STIGMEM_METRICS_ALLOW": "198.51.100.0/24, 2001:db8::/32"}


def test_who_may_scrape_loopback_listed_addresses_and_metrics_read_keys(start_node):
    n = start_node("a", env=PROXIED)
    reader = n.cli_json("apikey", "create", "--permissions", "metrics:read")["key"]
    auditor = n.cli_json("apikey", "create", "--permissions", "audit:read")["key"]

    def get(forwarded_for: str | None = None, key: str | None = None) -> httpx.Response:
        headers = {}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.get(n.url + "/metrics", headers=headers, timeout=10)

    assert get().status_code == 200  # loopback, no key
    # Behind the trusted proxy (127.0.0.1), the rule applies to the real client.
    for remote in ("203.0.113.7", "127.0.0.1, 203.0.113.7", "2001:db9::1"):
        res = get(remote)
        assert res.status_code == 403 and res.json()["error"] == "metrics_not_allowed", remote
    res = get("203.0.113.7", auditor)
    assert res.status_code == 403 and res.json()["error"] == "permission_required"
    assert get("203.0.113.7", "stigmem_nope_nope").status_code == 401
    ok = get("203.0.113.7", reader)
    assert ok.status_code == 200 and "stigmem_facts_stored" in ok.text
    assert get("198.51.100.9").status_code == 200  # listed in STIGMEM_METRICS_ALLOW
    assert get("2001:db8::5").status_code == 200
    assert get("127.0.0.5").status_code == 200  # a loopback client behind the proxy


def test_metrics_allow_must_be_addresses_or_networks(tmp_path):
    assert from_env({"STIGMEM_METRICS_ALLOW": "10.0.0.0/8, ::1"}).metrics_allow == "10.0.0.0/8, ::1"
    for bad in ("*", "example.org", "10.0.0.0/8,,"):
        with pytest.raises(ConfigError, match="STIGMEM_METRICS_ALLOW"):
            from_env({"STIGMEM_METRICS_ALLOW": bad})


def test_http_series_are_labelled_by_route_template_never_by_raw_path(start_node):
    n = start_node("a")
    with n.client() as c:
        assert c.get("/v1/facts/fact-id-that-is-nowhere").status_code == 404
        assert c.get("/no/such/path-xyzzy").status_code == 404
        assert c.delete("/metrics").status_code == 405
        assert c.request("PROPFIND", "/v1/facts").status_code == 405
        big = c.post("/v1/facts", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"})
        assert big.status_code == 413
    text = scrape_up(n)
    assert value(text, "stigmem_http_requests_total", route="/v1/facts/{fact_id}", method="GET", status="404") == 1
    assert value(text, "stigmem_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(text, "stigmem_http_requests_total", route="/metrics", method="DELETE", status="405") == 1
    assert value(text, "stigmem_http_requests_total", route="/v1/facts", method="other", status="405") == 1
    assert value(text, "stigmem_http_requests_total", route="/v1/facts", method="POST", status="413") == 1
    for raw in ("fact-id-that-is-nowhere", "xyzzy", "PROPFIND"):
        assert raw not in text


def test_lanes_tell_their_observer_the_lane_and_duration_of_each_piece_of_work():
    import asyncio

    seen: list[tuple[str, float]] = []
    lanes = Lanes(1, 1, observer=lambda lane, s: seen.append((lane, s)))

    def boom() -> None:
        raise ValueError("boom")

    async def run() -> None:
        assert await lanes.read(lambda: 1) == 1
        assert await lanes.write(time.sleep, 0.01) is None
        with pytest.raises(ValueError):
            await lanes.write(boom)

    try:
        asyncio.run(run())
    finally:
        lanes.close()
    assert [lane for lane, _ in seen] == ["read", "write", "write"]
    assert all(s >= 0 for _, s in seen) and seen[1][1] >= 0.01


@pytest.mark.postgres_only
def test_a_scrape_while_the_database_refuses_the_node_says_so_and_still_answers(start_node, engine):
    """PostgreSQL away (a failover): the scrape answers 200 with stigmem_database_up 0 and the
    in-process series, never a 500; and 1 with the storage series once it is back."""
    n = start_node("a")
    assert value(scrape(n), "stigmem_database_up") == 1
    with refusing_connections(str(n.target)):
        wait_for(lambda: value(scrape(n), "stigmem_database_up") == 0, timeout=30, what="stigmem_database_up 0")
        text = scrape(n)
        assert value(text, "stigmem_facts_stored", origin="local") is None
        assert value(text, "process_resident_memory_bytes") > 0
    wait_for(lambda: value(scrape(n), "stigmem_database_up") == 1, timeout=30, what="stigmem_database_up 1")
    assert value(scrape(n), "stigmem_facts_stored", origin="local") == 0
