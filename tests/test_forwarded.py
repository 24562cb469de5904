"""X-Forwarded-For from trusted proxies: only IP literals are believed.

In-process (the real app on a real SQLite file, through httpx's ASGI transport with a
chosen socket address), plus one real server on a real socket.  The evidence is the audit row
of a refused peer token, which records the client address.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from stigmem_node.config import Settings, validate
from stigmem_node.http import create_app
from stigmem_node.http.forwarded import MAX_HOPS, TrustedProxies, parse_ip
from stigmem_node.node import Node
from tests.engines import provide_pepper, url_kw
from tests.nodes import ServedNode

PROXY = "10.1.2.3"  # the socket address of every in-process request, inside the trusted network


class ProxiedNode:
    """The real app on a real database, trusting 10.0.0.0/8, called in process."""

    def __init__(self, db, database_url: str | None = None) -> None:
        if database_url:
            provide_pepper(db)
        self.node = Node(validate(Settings(db_path=db, trusted_proxies="10.0.0.0/8", **url_kw(database_url))),
                         serving=True)
        self.app = create_app(self.node)

    def bad_token(self, *forwarded: str, socket_addr: str = PROXY) -> httpx.Response:
        """One request with a bad peer token (refused, audited) and these X-Forwarded-For values."""
        headers = [("Authorization", "Bearer not-a-token"), *(("X-Forwarded-For", v) for v in forwarded)]

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(socket_addr, 41234))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                return await client.get("/v1/federation/facts", headers=headers)

        return asyncio.run(go())

    def last_rejection_addr(self) -> str:
        rows = [r for r in self.node.store.audit.iter_all() if r.event_type == "token_rejected"]
        return rows[-1].remote_addr


@pytest.fixture
def proxied(tmp_path, engine):
    p = ProxiedNode(tmp_path / "n.db", engine.url("n"))
    yield p
    p.node.store.close()


@pytest.fixture
def rejected_from(proxied):
    """Send one bad peer token with the given X-Forwarded-For values; return the audited address."""

    def send(*forwarded: str, socket_addr: str = PROXY) -> str:
        res = proxied.bad_token(*forwarded, socket_addr=socket_addr)
        assert res.status_code == 401 and res.json()["error"] == "malformed_token"
        return proxied.last_rejection_addr()

    return send


@pytest.mark.parametrize("forwarded", [
    "x" * 6000,  # the 6 KB string that was stored as an address
    "1" * 6000,
    "attacker.example.org",
    "localhost",
    "not an address",
    "",
    "   ",
    ",",
    "203.0.113.9:8080",  # a port is not part of an IP literal
    "[2001:db8::7]",
    "fe80::1%eth0",  # a scoped IPv6 address: the scope is free text
    "999.1.1.1",
    "203.0.113.9\x00",
    "junk, 10.0.0.7",  # the trusted hop is walked past, the next one is garbage
    ", ".join(["10.0.0.7"] * (MAX_HOPS + 5)),  # a chain too long to walk
])
def test_a_forged_forwarded_for_falls_back_to_the_socket_address(rejected_from, forwarded):
    assert rejected_from(forwarded) == PROXY


@pytest.mark.parametrize("forwarded, client", [
    (["203.0.113.9"], "203.0.113.9"),
    ([" 203.0.113.9 "], "203.0.113.9"),
    (["2001:DB8:0:0::7"], "2001:db8::7"),  # recorded in its normal form
    (["203.0.113.9, 10.0.0.7"], "203.0.113.9"),  # trusted hops are walked past
    (["garbage, 203.0.113.9"], "203.0.113.9"),  # left of the first untrusted hop is never looked at
    (["203.0.113.9", "10.0.0.7"], "203.0.113.9"),  # several headers are one list
    (["10.0.0.8, 10.0.0.7"], "10.0.0.8"),  # all hops trusted: the left-most
])
def test_a_valid_ip_from_a_trusted_proxy_is_the_client(rejected_from, forwarded, client):
    assert rejected_from(*forwarded) == client


def test_forwarded_for_from_an_untrusted_socket_is_ignored(rejected_from):
    assert rejected_from("203.0.113.9", socket_addr="192.0.2.44") == "192.0.2.44"


def test_forged_entries_cannot_spread_failures_over_made_up_addresses(proxied):
    """With garbage believed, each request would count for a new address and never reach the
    limit; as it is, they all count for the proxy's address and the limit (30) applies."""
    statuses = [proxied.bad_token(f"client-{i}.example").status_code for i in range(31)]
    assert statuses == [401] * 30 + [429]
    assert proxied.bad_token("203.0.113.9").status_code == 401  # a real client behind the proxy is not held up


def test_parse_ip_and_trust_rules():
    assert str(parse_ip(" ::ffff:1.2.3.4 ")) == "::ffff:102:304"
    assert parse_ip("1.2.3.4" + " " * 100) is not None  # spaces are trimmed before the length check
    assert parse_ip("1" * 46) is None and parse_ip("01.2.3.4") is None
    everyone = TrustedProxies("*")
    assert everyone.client_address("203.0.113.9, 10.0.0.7") == "203.0.113.9"
    assert everyone.client_address("junk, 10.0.0.7") is None
    some = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert some.trusts_host("10.9.9.9") and some.trusts_host("127.0.0.1")
    assert not some.trusts_host("127.0.0.2") and not some.trusts_host("not-an-ip")


def test_a_real_server_behind_a_trusted_proxy_stores_no_forged_address(tmp_path, engine):
    """End to end over a real socket: the 6 KB header that was once stored as an address."""
    node = ServedNode(tmp_path / "a", "a", env={"STIGMEM_TRUSTED_PROXIES": "127.0.0.1"}, database_url=engine.url("a"))
    try:
        for forwarded, expected in (("x" * 6000, "127.0.0.1"), ("203.0.113.9", "203.0.113.9")):
            res = httpx.get(node.url + "/v1/federation/facts", timeout=10,
                            headers={"Authorization": "Bearer not-a-token", "X-Forwarded-For": forwarded})
            assert res.status_code == 401
            rows = node.cli_json("audit", "list", "--event-type", "token_rejected")
            assert rows[-1]["remote_addr"] == expected
    finally:
        node.stop()
