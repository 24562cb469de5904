"""The pull endpoint ``GET /v1/federation/facts`` and peer-token authentication, end to end.

Real nodes (served in process, see tests/nodes.py; a second ``stigmem-node serve``
process on A's database where two processes must share one), real HTTP, real Ed25519
keys (read from the nodes' own SQLite files).  Each test gets its own federation: node A
serves; B is the puller, registered on A and approved by fingerprint; C is a third
registered peer (granted ``public`` only) whose key is used to forge tokens that claim
to be B.

A refuses peer presentations per client address after 30 failures a minute and writes
at most 20 audit rows per address a minute.  Tests that present many failing tokens
send from their own loopback source addresses (``127.x.y.z`` all reach a server bound
to 127.0.0.1), so that the requests of one test do not share those budgets.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stigmem_node import tokens
from stigmem_node.encoding import b64url_decode, b64url_encode
from stigmem_node.keys import public_key_from_b64
from stigmem_node.origin import entry_from_wire, verify_fact_origin
from stigmem_node.tokens import MAX_LEEWAY_MS, NONCE_PRUNE_MARGIN_MS, nonce_kept_until
from tests.engines import connect, sql
from tests.nodes import RunningNode, ServedNode

PULL = "/v1/federation/facts"
AUDIT = "/v1/federation/audit"
LEEWAY_MS = 30_000
MAX_LIFETIME_MS = 3_600_000
ERROR_KEYS = {"error", "detail", "message"}
DROP = object()  # claims(...) value meaning "leave this claim out"

TOKEN_CODES = set(tokens.REJECTION_CODES) | {"nonce_already_seen"}
PULL_CODES = TOKEN_CODES | {"too_many_failed_attempts", "scope_not_permitted", "no_permitted_scopes"}


def now_ms() -> int:
    return int(time.time() * 1000)


_addresses = itertools.count(1)
_addr_lock = threading.Lock()


def new_addr() -> str:
    """A loopback source address no other request in this module has used."""
    with _addr_lock:
        n = next(_addresses)
    return f"127.{20 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"


def private_key_of(db: Path | str) -> Ed25519PrivateKey:
    ((priv,),) = sql(db, "SELECT private_key FROM node_keys WHERE status = 'active'")
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(priv))


def b64json(obj: Any) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def jws(header: dict, claims: dict, key: Ed25519PrivateKey | None) -> str:
    """A compact JWS built by hand (so that any header and claims can be signed)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    sig = key.sign(signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64url_encode(sig)}"


def page_path(*, limit: int | str | None = None, cursor: str | None = None, scope: str | None = None) -> str:
    params = [(k, str(v)) for k, v in (("cursor", cursor), ("limit", limit), ("scope", scope)) if v is not None]
    return PULL + ("?" + "&".join(f"{k}={v}" for k, v in params) if params else "")


def assert_error(res: httpx.Response, status: int, code: str) -> dict:
    assert res.status_code == status, (res.status_code, res.text)
    body = res.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["error"] == body["detail"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def one_request(url: str, path: str, *, auth: str | None, addr: str) -> httpx.Response:
    """One GET on a fresh connection from ``addr``, with exactly the Authorization given."""
    headers = {"Authorization": auth} if auth is not None else {}
    with httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=addr)) as client:
        return client.get(path, headers=headers)


def register_and_approve(a: RunningNode, peer: RunningNode, scopes: str | None = None) -> dict:
    wk = peer.well_known()
    res = a.client().post(PEER_PATH + (f"?scopes={scopes}" if scopes else ""), json=wk["declaration"])
    assert res.status_code == 201, res.text
    rec = res.json()
    ok = a.client().post(f"{PEER_PATH}/{rec['peer_id']}/approve", json={"pubkey_fingerprint": wk["pubkey_fingerprint"]})
    assert ok.status_code == 200 and ok.json()["status"] == "active", ok.text
    return ok.json()


PEER_PATH = "/v1/federation/peers"


@dataclass
class Fed:
    a: RunningNode
    b: RunningNode
    c: RunningNode
    b_peer: dict  # B's peer record on A
    c_peer: dict
    a_id: str = ""
    b_id: str = ""
    c_id: str = ""
    a_pub: Ed25519PublicKey | None = None
    b_key: Ed25519PrivateKey | None = None
    c_key: Ed25519PrivateKey | None = None
    b_kid: str = ""
    c_kid: str = ""
    _clients: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        wa, wb, wc = self.a.well_known(), self.b.well_known(), self.c.well_known()
        self.a_id, self.b_id, self.c_id = wa["node_id"], wb["node_id"], wc["node_id"]
        self.a_pub = public_key_from_b64(wa["federation_pubkey"])
        self.b_key, self.c_key = private_key_of(self.b.target), private_key_of(self.c.target)
        self.b_kid, self.c_kid = wb["key_id"], wc["key_id"]
        self.b_pub_text = wb["federation_pubkey"]

    # -- tokens
    def mint(self, path: str | None = PULL, *, scopes=("company", "public"), ttl_ms: int = 60_000,
             now: int | None = None, nonce: str | None = None, as_c: bool = False) -> str:
        """A real token from B (or C), minted by stigmem_node.tokens.mint and bound to GET ``path``."""
        return tokens.mint(
            issuer=self.c_id if as_c else self.b_id, audience=self.a_id,
            private_key=self.c_key if as_c else self.b_key, key_id=self.c_kid if as_c else self.b_kid,
            scopes=list(scopes), now_ms=now if now is not None else now_ms(), ttl_ms=ttl_ms,
            htm="GET" if path is not None else None, htu=path, nonce=nonce,
        )

    def header(self, **changes: Any) -> dict:
        h = {"alg": "EdDSA", "typ": "JWT", "kid": self.b_kid}
        h.update(changes)
        return {k: v for k, v in h.items() if v is not DROP}

    def claims(self, path: str | None = PULL, *, iat: Any = None, ttl_ms: int = 60_000, **changes: Any) -> dict:
        t = now_ms() if iat is None else iat
        c: dict[str, Any] = {"iss": self.b_id, "sub": self.a_id, "iat": t,
                             "exp": (t + ttl_ms) if isinstance(t, int) else now_ms() + ttl_ms,
                             "nonce": str(uuid.uuid4()), "scopes": ["company", "public"], "htm": "GET", "htu": path}
        if path is None:
            del c["htm"], c["htu"]
        c.update(changes)
        return {k: v for k, v in c.items() if v is not DROP}

    def crafted(self, path: str | None = PULL, key: Ed25519PrivateKey | None = None, header: dict | None = None,
                **claim_changes: Any) -> str:
        """A hand-built token, signed by B's key unless ``key`` is given."""
        return jws(header or self.header(), self.claims(path, **claim_changes), key or self.b_key)

    # -- requests
    def client(self, addr: str = "127.0.0.1", url: str | None = None) -> httpx.Client:
        key = (url or self.a.url, addr)
        if key not in self._clients:
            self._clients[key] = httpx.Client(base_url=key[0], timeout=30,
                                              transport=httpx.HTTPTransport(local_address=addr))
        return self._clients[key]

    def get(self, path: str, token: str | None, addr: str = "127.0.0.1", url: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.client(addr, url).get(path, headers=headers)

    def page(self, *, limit: int | None = 500, cursor: str | None = None, scope: str | None = None,
             scopes=("company", "public"), as_c: bool = False, addr: str = "127.0.0.1") -> dict:
        path = page_path(limit=limit, cursor=cursor, scope=scope)
        res = self.get(path, self.mint(path, scopes=scopes, as_c=as_c), addr)
        assert res.status_code == 200, res.text
        return res.json()

    def pull_all(self, cursor: str | None = None, **kw: Any) -> tuple[list[dict], str]:
        """Every entry after ``cursor``, page by page with a fresh token each; and the final cursor."""
        entries: list[dict] = []
        while True:
            body = self.page(cursor=cursor, **kw)
            entries += body["facts"]
            cursor = body["cursor"]
            if not body["has_more"]:
                return entries, cursor

    def end_cursor(self) -> str:
        return self.pull_all(scopes=("company", "public"))[1]

    def add_facts(self, facts: list[dict], node: RunningNode | None = None) -> list[dict]:
        res = (node or self.a).client().post("/v1/facts", json={"facts": facts})
        assert res.status_code in (200, 201), res.text
        return res.json()["facts"]

    # -- audit
    def audit(self, **params: Any) -> list[dict]:
        res = self.a.client().get(AUDIT, params={"limit": 500, **params})
        assert res.status_code == 200, res.text
        return res.json()["entries"]

    def latest_audit(self) -> dict:
        return self.audit(order="desc", limit=1)[0]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def fact(entity: str, scope: str, v: Any = None, **extra: Any) -> dict:
    value = {"type": "string", "v": entity} if v is None else v
    return {"entity": entity, "relation": "test:rel", "value": value, "source": "test_pull", "scope": scope, **extra}


def ids(entries: list[dict]) -> list[str]:
    return [e["fact"]["id"] for e in entries]


@pytest.fixture
def fed(start_node) -> Iterator[Fed]:
    yield from _federation(start_node("a"), start_node)


@pytest.fixture
def fed_processes(start_process_node, start_node) -> Iterator[Fed]:
    """As ``fed``, with A a ``serve`` process of its own: for tests whose point is that
    several processes serve and write at once."""
    yield from _federation(start_process_node("a"), start_node)


def _federation(a: RunningNode | ServedNode, start_node) -> Iterator[Fed]:
    b = start_node("b", env={"STIGMEM_FEDERATION_SCOPES": "company,public,team"})
    c = start_node("c")
    # B declares company, public and team, so A grants it all three; A itself shares only
    # company and public.  C is granted only public by A's operator.
    b_peer = register_and_approve(a, b)
    c_peer = register_and_approve(a, c, scopes="public")
    assert b_peer["allowed_scopes"] == ["company", "public", "team"]
    assert c_peer["allowed_scopes"] == ["public"]
    f = Fed(a, b, c, b_peer, c_peer)
    yield f
    f.close()


def _replica(fed: Fed, tmp_path: Path) -> Iterator[RunningNode]:
    """A second `serve` process on A's database file (a replica behind a load balancer)."""
    server = RunningNode(tmp_path / "replica", "a2", db=fed.a.db, args=("--node-url", fed.a.url),
                         database_url=fed.a.database_url)
    yield server
    server.stop()


@pytest.fixture
def replica(fed: Fed, tmp_path: Path) -> Iterator[RunningNode]:
    yield from _replica(fed, tmp_path)


@pytest.fixture
def replica_processes(fed_processes: Fed, tmp_path: Path) -> Iterator[RunningNode]:
    yield from _replica(fed_processes, tmp_path)


def nonce_row(db: Path | str, nonce: str) -> tuple | None:
    rows = sql(db, "SELECT peer_id, expires_at_ms FROM nonce_cache WHERE nonce = ?", (nonce,))
    return rows[0] if rows else None


# --------------------------------------------------------------------------- acceptance


def test_a_valid_token_gets_a_v2_page(fed: Fed):
    res = fed.get(PULL, fed.mint(PULL))
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("application/json")
    body = res.json()
    assert set(body) == {"v", "facts", "cursor", "has_more"} and body["v"] == 2
    assert isinstance(body["cursor"], str) and body["has_more"] is False


def test_reference_style_tokens_are_accepted(fed: Fed):
    """The reference sends no kid and no htm/htu; the scheme name is case-insensitive; an
    unknown kid falls back to trying every key of the peer."""
    no_kid = fed.crafted(None, header=fed.header(kid=DROP))
    res = fed.client(new_addr()).get(PULL, headers={"Authorization": f"bearer {no_kid}"})
    assert res.status_code == 200, res.text
    unknown_kid = fed.crafted(PULL, header=fed.header(kid="not-a-key-id"))
    assert fed.get(PULL, unknown_kid, new_addr()).status_code == 200
    # An unbound token works on any path and query of the endpoint.
    unbound = fed.crafted(None)
    assert fed.get(page_path(limit=3), unbound, new_addr()).status_code == 200


# --------------------------------------------------------------------------- rejection codes


def _basic(f: Fed) -> str:
    return "Basic " + b64url_encode(b"b:secret")


def _alg_none(f: Fed) -> str:
    return f"Bearer {b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(f.claims())}."


def _hs256_with_public_key(f: Fed) -> str:
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(f.claims())}"
    mac = hmac.new(f.b_pub_text.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"Bearer {signing_input}.{b64url_encode(mac)}"


UNKNOWN_NODE = "stigmem:node:" + str(uuid.uuid4())

# (id, Authorization value, code, issuer ("B", "X" = UNKNOWN_NODE or None), skew_ms ~, peer known)
REJECTIONS: list[tuple[str, Callable[[Fed], str | None], str, str | None, int | None, bool]] = [
    ("no_header", lambda f: None, "peer_token_required", None, None, False),
    ("basic_scheme", _basic, "peer_token_required", None, None, False),
    ("not_a_jws", lambda f: "Bearer not-a-jwt", "malformed_token", None, None, False),
    ("string_iat", lambda f: "Bearer " + f.crafted(iat=str(now_ms())), "malformed_token", "B", None, False),
    ("alg_none", _alg_none, "invalid_token", "B", 0, False),
    ("hs256_public_key_as_secret", _hs256_with_public_key, "invalid_token", "B", 0, False),
    ("unknown_issuer", lambda f: "Bearer " + f.crafted(key=Ed25519PrivateKey.generate(), iss=UNKNOWN_NODE),
     "peer_not_registered", "X", 0, False),
    ("signed_by_third_peer", lambda f: "Bearer " + f.crafted(key=f.c_key, header=f.header(kid=f.c_kid)),
     "invalid_signature", "B", 0, True),
    ("kid_matches_no_key", lambda f: "Bearer " + f.crafted(key=Ed25519PrivateKey.generate(),
                                                          header=f.header(kid="no-such-key")),
     "invalid_signature", "B", 0, True),
    ("sub_is_another_node", lambda f: "Bearer " + f.crafted(sub=f.c_id), "invalid_sub", "B", 0, True),
    ("expired", lambda f: "Bearer " + f.crafted(iat=now_ms() - 200_000, ttl_ms=100_000),
     "token_expired", "B", 200_000, True),
    ("iat_in_future", lambda f: "Bearer " + f.crafted(iat=now_ms() + 120_000),
     "iat_in_future", "B", -120_000, True),
    ("lifetime_one_ms_too_long", lambda f: "Bearer " + f.crafted(ttl_ms=MAX_LIFETIME_MS + 1),
     "token_lifetime_exceeded", "B", 0, True),
    ("nbf_in_future", lambda f: "Bearer " + f.crafted(nbf=now_ms() + 120_000), "nbf_in_future", "B", 0, True),
    ("no_nonce", lambda f: "Bearer " + f.crafted(nonce=DROP), "missing_nonce", "B", 0, True),
    ("htu_for_another_path", lambda f: "Bearer " + f.crafted("/v1/federation/tombstones"),
     "token_binding_mismatch", "B", 0, True),
    ("htm_post", lambda f: "Bearer " + f.crafted(htm="POST"), "token_binding_mismatch", "B", 0, True),
]


def check_rejection_audit(f: Fed, entry: dict, *, event: str, code: str, issuer: str | None,
                          skew: int | None, peer_known: bool, addr: str) -> None:
    assert entry["event_type"] == event and entry["reason"] == code, entry
    assert entry["remote_addr"] == addr
    assert entry["ts"]
    assert entry["detail"]["issuer"] == issuer
    if skew is None:
        assert entry["detail"]["skew_ms"] is None
    else:
        assert abs(entry["detail"]["skew_ms"] - skew) < 10_000, entry
    assert entry["peer_id"] == (f.b_peer["peer_id"] if peer_known else None)
    assert "suppressed_before" not in entry["detail"]


@pytest.mark.parametrize("case", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejection_codes_status_body_and_audit(fed: Fed, case):
    _, build, code, issuer, skew, peer_known = case
    auth = build(fed)
    headers = {"Authorization": auth} if auth is not None else {}
    res = fed.client("127.0.0.1").get(PULL, headers=headers)
    body = assert_error(res, 401, code)
    assert set(body) == ERROR_KEYS  # nothing else: no issuer, no claims, no key material
    expected_issuer = {"B": fed.b_id, "X": UNKNOWN_NODE, None: None}[issuer]
    check_rejection_audit(fed, fed.latest_audit(), event="token_rejected", code=code, issuer=expected_issuer,
                          skew=skew, peer_known=peer_known, addr="127.0.0.1")


def test_rejection_peer_not_active_is_403_while_suspended(fed: Fed):
    pid = fed.b_peer["peer_id"]
    token = fed.mint(PULL)
    assert fed.a.client().post(f"{PEER_PATH}/{pid}/suspend", json={"reason": "test"}).json()["status"] == "suspended"
    try:
        res = fed.client("127.0.0.1").get(PULL, headers={"Authorization": f"Bearer {token}"})
        assert set(assert_error(res, 403, "peer_not_active")) == ERROR_KEYS
        check_rejection_audit(fed, fed.latest_audit(), event="token_rejected", code="peer_not_active",
                              issuer=fed.b_id, skew=0, peer_known=True, addr="127.0.0.1")
    finally:
        assert fed.a.client().post(f"{PEER_PATH}/{pid}/resume").json()["status"] == "active"
    # Not consumed by the refusal: the same token works once B is active again.
    assert fed.client("127.0.0.1").get(PULL, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_suspension_made_with_the_cli_applies_to_the_next_request(fed: Fed):
    """The server caches peer lookups; a change made by another process must still apply at once."""
    pid = fed.b_peer["peer_id"]
    assert fed.get(PULL, fed.mint(PULL)).status_code == 200  # the lookup is now cached
    assert fed.a.cli("peers", "suspend", pid).returncode == 0
    try:
        assert_error(fed.get(PULL, fed.mint(PULL)), 403, "peer_not_active")
    finally:
        assert fed.a.cli("peers", "resume", pid).returncode == 0
    assert fed.get(PULL, fed.mint(PULL)).status_code == 200


def test_rejection_replay_is_nonce_already_seen_and_audited_as_replay_attempt(fed: Fed):
    token = fed.mint(PULL)
    assert fed.get(PULL, token).status_code == 200
    res = fed.get(PULL, token)
    assert set(assert_error(res, 401, "nonce_already_seen")) == ERROR_KEYS
    check_rejection_audit(fed, fed.latest_audit(), event="replay_attempt", code="nonce_already_seen",
                          issuer=fed.b_id, skew=0, peer_known=True, addr="127.0.0.1")


def test_tombstones_endpoint_needs_a_token_too(fed: Fed):
    addr = new_addr()
    assert_error(fed.get("/v1/federation/tombstones", None, addr), 401, "peer_token_required")
    path = "/v1/federation/tombstones?since=5"
    res = fed.get(path, fed.mint(path), addr)
    assert res.status_code == 200
    assert res.json() == {"v": 2, "tombstones": [], "revocations": [], "cursor": "5", "has_more": False}
    # A token for the facts endpoint cannot be spent on tombstones.
    assert_error(fed.get(path, fed.mint(PULL), addr), 401, "token_binding_mismatch")


# --------------------------------------------------------------------------- invariant 1


def _present_concurrently(requests: list[tuple[str, str]], token: str) -> list[httpx.Response]:
    """GET each (url, path) once with ``token``, each from its own source address, all at once
    (one thread each, released together by a barrier; at most 50)."""
    assert len(requests) <= 50
    barrier = threading.Barrier(len(requests))

    def go(item: tuple[str, str]) -> httpx.Response:
        url, path = item
        addr = new_addr()
        with httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=addr)) as client:
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            return client.get(path, headers={"Authorization": f"Bearer {token}"})

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(go, requests))


def test_inv1_fifty_concurrent_presentations_of_one_token_succeed_once(fed: Fed):
    nonce = str(uuid.uuid4())
    token = fed.mint(PULL, nonce=nonce)
    before = len(fed.audit(event_type="replay_attempt"))
    responses = _present_concurrently([(fed.a.url, PULL)] * 50, token)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * 49
    for r in responses:
        if r.status_code == 401:
            assert_error(r, 401, "nonce_already_seen")
    replays = fed.audit(event_type="replay_attempt")[before:]
    assert len(replays) == 49 and all(e["reason"] == "nonce_already_seen" for e in replays)
    assert nonce_row(fed.a.target, nonce)[0] == fed.b_peer["peer_id"]


def test_inv1_two_processes_on_one_database_accept_a_token_once(fed: Fed, replica: RunningNode):
    assert httpx.get(replica.url + "/.well-known/stigmem").json()["node_id"] == fed.a_id
    for _ in range(5):
        token = fed.mint(PULL)
        targets = [(fed.a.url, PULL), (replica.url, PULL)] * 10
        responses = _present_concurrently(targets, token)
        ok = [(r.url.port, r.status_code) for r in responses if r.status_code == 200]
        assert len(ok) == 1, ok
        for r in responses:
            if r.status_code != 200:
                assert_error(r, 401, "nonce_already_seen")
    # Each process also refuses a token the other one accepted, sequentially.
    token = fed.mint(PULL)
    assert fed.get(PULL, token, new_addr(), url=replica.url).status_code == 200
    assert_error(fed.get(PULL, token, new_addr()), 401, "nonce_already_seen")


# --------------------------------------------------------------------------- invariant 3


def test_inv3_a_forger_cannot_burn_a_real_nonce(fed: Fed):
    addr = new_addr()
    nonce = str(uuid.uuid4())
    real = fed.mint(PULL, nonce=nonce)
    attempts = [
        (fed.crafted(key=Ed25519PrivateKey.generate(), nonce=nonce), "invalid_signature"),
        (fed.crafted(key=fed.c_key, header=fed.header(kid=fed.c_kid), nonce=nonce), "invalid_signature"),
        (fed.crafted(key=fed.c_key, header=fed.header(kid=DROP), nonce=nonce), "invalid_signature"),
        # Signed by B itself but failing a claim check: still must not consume the nonce.
        (fed.crafted(sub=fed.c_id, nonce=nonce), "invalid_sub"),
        (fed.crafted(iat=now_ms() - 200_000, ttl_ms=100_000, nonce=nonce), "token_expired"),
        (fed.crafted("/v1/federation/tombstones", nonce=nonce), "token_binding_mismatch"),
    ]
    for forged, code in attempts:
        assert_error(fed.get(PULL, forged, addr), 401, code)
        assert nonce_row(fed.a.target, nonce) is None, code
    assert fed.get(PULL, real, addr).status_code == 200
    assert nonce_row(fed.a.target, nonce) is not None
    assert_error(fed.get(PULL, real, addr), 401, "nonce_already_seen")


@pytest.mark.parametrize("nonce", ["\x00", "ok\x00"])
def test_a_signed_token_whose_nonce_holds_nul_is_malformed_on_every_engine(fed: Fed, nonce: str):
    # PostgreSQL text cannot hold NUL; refusing it before any storage keeps both engines alike.
    assert_error(fed.get(PULL, fed.crafted(nonce=nonce), new_addr()), 401, "malformed_token")


# --------------------------------------------------------------------------- invariant 4


def test_inv4_maximum_lifetime_accepted_one_ms_more_refused_and_nonce_kept_beyond_every_leeway(fed: Fed):
    addr = new_addr()
    t = now_ms()
    nonce = str(uuid.uuid4())
    token = fed.mint(PULL, ttl_ms=MAX_LIFETIME_MS, now=t, nonce=nonce)
    claims = json.loads(b64url_decode(token.split(".")[1]))
    assert claims["exp"] - claims["iat"] == MAX_LIFETIME_MS
    assert fed.get(PULL, token, addr).status_code == 200
    assert nonce_row(fed.a.target, nonce) == (fed.b_peer["peer_id"], nonce_kept_until(t + MAX_LIFETIME_MS))

    over_nonce = str(uuid.uuid4())
    over = fed.crafted(iat=t, ttl_ms=MAX_LIFETIME_MS + 1, nonce=over_nonce)
    assert_error(fed.get(PULL, over, addr), 401, "token_lifetime_exceeded")
    assert nonce_row(fed.a.target, over_nonce) is None

    # A default 60 s token is kept until exp + the largest leeway any process may use + a margin.
    nonce = str(uuid.uuid4())
    t = now_ms()
    assert fed.get(PULL, fed.mint(PULL, now=t, nonce=nonce), addr).status_code == 200
    assert nonce_row(fed.a.target, nonce)[1] == t + 60_000 + MAX_LEEWAY_MS + NONCE_PRUNE_MARGIN_MS


def test_inv4_expiry_uses_the_leeway_exactly(fed: Fed):
    addr = new_addr()
    # exp passed 20 s ago: within the 30 s leeway, still accepted.
    t = now_ms()
    assert fed.get(PULL, fed.crafted(iat=t - 80_000, ttl_ms=60_000), addr).status_code == 200
    # exp passed 40 s ago: expired.
    assert_error(fed.get(PULL, fed.crafted(iat=t - 100_000, ttl_ms=60_000), addr), 401, "token_expired")
    # iat 20 s ahead (clock skew within leeway) is fine; 40 s ahead is not.
    assert fed.get(PULL, fed.crafted(iat=now_ms() + 20_000), addr).status_code == 200
    assert_error(fed.get(PULL, fed.crafted(iat=now_ms() + 40_000), addr), 401, "iat_in_future")


# --------------------------------------------------------------------------- invariant 5


def test_inv5_peers_get_only_scopes_granted_shared_and_requested(fed: Fed):
    c0 = fed.end_cursor()
    tag = uuid.uuid4().hex[:8]
    posted = fed.add_facts([fact(f"inv5:{tag}:{scope}:{i}", scope)
                            for scope in ("local", "team", "company", "public") for i in range(3)])
    expired = fed.add_facts([fact(f"inv5:{tag}:expired", "public", valid_until="2001-01-01T00:00:00Z")])[0]
    by_scope = {s: {f["id"] for f in posted if f["scope"] == s} for s in ("local", "team", "company", "public")}
    assert all(len(v) == 3 for v in by_scope.values())

    def served(**kw: Any) -> set[str]:
        entries, _ = fed.pull_all(c0, **kw)
        assert len(ids(entries)) == len(set(ids(entries)))
        for e in entries:
            assert e["origin"]["allowed_scopes"] == [e["fact"]["scope"]]
        return set(ids(entries))

    # B is granted company, public and team; A shares company and public: team never leaves A.
    assert served(scopes=("company", "local", "public", "team")) == by_scope["company"] | by_scope["public"]
    assert served(scopes=("public",)) == by_scope["public"]
    assert served(scopes=("company",)) == by_scope["company"]
    assert served(scopes=("company", "public"), scope="public") == by_scope["public"]
    # C is granted only public, whatever its token asks for.
    assert served(scopes=("company", "public"), as_c=True) == by_scope["public"]
    assert expired["id"] not in served(scopes=("public",))

    addr = new_addr()
    for scope in ("local", "team"):
        path = page_path(scope=scope)
        res = fed.get(path, fed.mint(path, scopes=("company", "local", "public", "team")), addr)
        assert_error(res, 403, "scope_not_permitted")
        entry = fed.latest_audit()
        assert entry["event_type"] == "scope_violation" and entry["reason"] == "scope_not_permitted"
        assert entry["peer_id"] == fed.b_peer["peer_id"] and entry["remote_addr"] == addr
        assert entry["detail"]["requested_scope"] == scope
    path = page_path(scope="company")
    assert_error(fed.get(path, fed.mint(path, scopes=("company", "public"), as_c=True), addr), 403,
                 "scope_not_permitted")
    assert fed.latest_audit()["peer_id"] == fed.c_peer["peer_id"]
    path = page_path(scope="galaxy")
    assert_error(fed.get(path, fed.mint(path), addr), 422, "invalid_scope")

    for scopes in (("local",), ("team",), ()):
        res = fed.get(PULL, fed.mint(PULL, scopes=scopes), addr)
        assert_error(res, 403, "no_permitted_scopes")
        entry = fed.latest_audit()
        assert (entry["event_type"], entry["reason"]) == ("scope_violation", "no_permitted_scopes")
        assert entry["detail"]["token_scopes"] == list(scopes)


def test_inv5_facts_received_from_peers_are_not_served(fed: Fed):
    c0 = fed.end_cursor()
    (own,) = fed.add_facts([fact(f"relay:{uuid.uuid4()}", "public")])
    received_id = str(uuid.uuid4())
    with connect(fed.a.target) as conn:
        # Copy A's own row, as a fact received from C would look: every column kept (whatever
        # the schema holds), the id replaced everywhere, provenance set to C.
        (found,) = conn.execute("SELECT * FROM facts WHERE id = ?", (own["id"],))
        row = dict(zip(conn.columns, found))
        del row["seq"]
        for name, value in row.items():
            if isinstance(value, str):
                row[name] = value.replace(own["id"], received_id)
        row.update(origin_node_id=fed.c_id, received_from=fed.c_peer["peer_id"],
                   received_at="2026-01-01T00:00:00.000000Z")
        conn.execute(f"INSERT INTO facts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     tuple(row.values()))
    (own2,) = fed.add_facts([fact(f"relay:{uuid.uuid4()}", "company")])
    served = ids(fed.pull_all(c0)[0])
    assert served == [own["id"], own2["id"]]
    # The operator still sees the received fact locally.
    shown = fed.a.client().get(f"/v1/facts/{received_id}").json()
    assert shown["received_from"] == fed.c_peer["peer_id"]


# --------------------------------------------------------------------------- paging and envelope


def test_paging_limits_cursor_and_has_more(fed: Fed):
    c0 = fed.end_cursor()
    tag = uuid.uuid4().hex[:8]
    written = [f["id"] for f in fed.add_facts([fact(f"page:{tag}:{i}", "public") for i in range(150)])]
    fed.add_facts([fact(f"page:{tag}:hidden:{i}", s) for i, s in enumerate(["local", "team"] * 5)])

    default = fed.page(limit=None, cursor=c0)
    assert ids(default["facts"]) == written[:100] and default["has_more"] is True
    exact = fed.page(limit=150, cursor=c0)
    assert ids(exact["facts"]) == written and exact["has_more"] is False
    one_short = fed.page(limit=149, cursor=c0)
    assert ids(one_short["facts"]) == written[:149] and one_short["has_more"] is True

    # Exclusive cursor: page after page, nothing repeated, nothing skipped.
    p1 = fed.page(limit=1, cursor=c0)
    assert ids(p1["facts"]) == written[:1]
    p2 = fed.page(limit=2, cursor=p1["cursor"])
    assert ids(p2["facts"]) == written[1:3]
    walked, end = fed.pull_all(c0, limit=7)
    assert ids(walked) == written
    assert end == exact["cursor"] == fed.end_cursor()

    # An empty page echoes the cursor and says there is no more.
    for cursor in (end, "99999999999"):
        empty = fed.page(cursor=cursor)
        assert empty == {"v": 2, "facts": [], "cursor": cursor, "has_more": False}
    # The start: no cursor, or an empty one.
    assert fed.page(limit=1)["facts"] == fed.page(limit=1, cursor="")["facts"]

    addr = new_addr()
    for bad in ("0", "501", "abc", "-1", "1.5", "", "%C2%B2"):
        path = page_path(limit=bad)
        body = assert_error(fed.get(path, fed.mint(path), addr), 422, "invalid_request")
        assert body["field"] == "limit"
    for bad in ("abc", "-1", "1.5", "1" * 19, "0x10", "%20"):
        path = page_path(cursor=bad)
        body = assert_error(fed.get(path, fed.mint(path), addr), 422, "invalid_cursor")
        assert body["field"] == "cursor"
    everything, _ = fed.pull_all("0")
    assert len(fed.page(limit=1, cursor="0")["facts"]) == 1
    assert len(fed.page(limit=500, cursor="0")["facts"]) == min(500, len(everything))


def test_envelope_shape_origin_signatures_and_cids_verify(fed: Fed):
    c0 = fed.end_cursor()
    tag = uuid.uuid4().hex[:8]
    values = [{"type": "number", "v": 42}, {"type": "number", "v": 42.0}, {"type": "number", "v": -0.0},
              {"type": "number", "v": 2**62}, {"type": "number", "v": 1e20}, {"type": "boolean", "v": False},
              {"type": "null", "v": None}, {"type": "text", "v": "ünïcödé ✓ \u2028"},
              {"type": "datetime", "v": "2026-01-02T03:04:05+02:00"}, {"type": "ref", "v": "urn:x:1"},
              {"type": "string", "v": "instruction?", "interpret_as": "instruction"}]
    posted = fed.add_facts(
        [fact(f"env:{tag}:{i}", "company" if i % 2 else "public", v=v, confidence=0.25 * (i % 5))
         for i, v in enumerate(values)]
        + [fact(f"env:{tag}:vu", "public", valid_until="2999-01-01T00:00:00+01:00")])
    res = fed.get(page_path(cursor=c0), fed.mint(page_path(cursor=c0)))
    raw = res.text
    assert '"v":42,' in raw and '"v":42.0,' in raw  # integers stay integers on the wire
    body = res.json()
    assert set(body) == {"v", "facts", "cursor", "has_more"} and body["v"] == 2 and body["has_more"] is False
    # Instruction facts stay home by default (receivers would have to quarantine them).
    served = [f for f in posted if f["value"].get("interpret_as") != "instruction"]
    assert len(served) == len(posted) - 1
    assert ids(body["facts"]) == [f["id"] for f in served]
    for entry, mine in zip(body["facts"], served):
        assert {"fact", "origin", "origin_sig"} <= set(entry)
        assert entry["origin"] == {"tenant": "default", "node_id": fed.a_id, "allowed_scopes": [mine["scope"]],
                                   "allowed_tenants": ["default"], "entity_uri": fed.a.well_known()["entity_uri"]}
        assert entry["fact"]["value"] == {**mine["value"]} and type(entry["fact"]["value"]["v"]) is type(
            mine["value"]["v"])
        parsed = entry_from_wire(entry)  # recomputes the CID; raises on a mismatch
        assert parsed.fact.cid == entry["fact"]["cid"] == mine["cid"]
        assert verify_fact_origin(fed.a_pub, parsed.fact, parsed.origin, parsed.origin_sig)
        # The signature covers the grant and valid_until: altering either breaks it.
        other_scope = "public" if mine["scope"] == "company" else "company"
        bent = entry_from_wire({**entry, "origin": {**entry["origin"], "allowed_scopes": [other_scope]}})
        assert not verify_fact_origin(fed.a_pub, bent.fact, bent.origin, bent.origin_sig)
        assert not verify_fact_origin(Ed25519PrivateKey.generate().public_key(), parsed.fact, parsed.origin,
                                      parsed.origin_sig)
    assert body["facts"][-1]["fact"]["valid_until"] == posted[-1]["valid_until"] == "2999-01-01T00:00:00+01:00"


# --------------------------------------------------------------------------- failure rate limit


def test_failures_are_rate_limited_per_address_and_audit_rows_capped(fed: Fed, tmp_path: Path, engine):
    a = ServedNode(tmp_path / "rl", "rl", database_url=engine.url("rl"))
    try:
        b_peer = register_and_approve(a, fed.b)
        a_id = a.well_known()["node_id"]
        good = tokens.mint(issuer=fed.b_id, audience=a_id, private_key=fed.b_key, key_id=fed.b_kid,
                           scopes=["company", "public"], now_ms=now_ms(), htm="GET", htu=PULL)
        with httpx.Client(base_url=a.url, timeout=30) as client:
            for i in range(30):
                res = client.get(PULL, headers={"Authorization": f"Bearer garbage.{i}"})
                assert_error(res, 401, "malformed_token")
            res = client.get(PULL, headers={"Authorization": f"Bearer {good}"})
            body = assert_error(res, 429, "too_many_failed_attempts")
            retry = int(res.headers["Retry-After"])
            assert 1 <= retry <= 60 and body.get("retry_after") == retry
            # Every presentation is refused while the address is over the limit.
            assert_error(client.get(PULL), 429, "too_many_failed_attempts")
        # Another address is not affected, and the refused token was not consumed.
        assert one_request(a.url, PULL, auth=f"Bearer {good}", addr=new_addr()).status_code == 200
        entries = a.client().get(AUDIT, params={"limit": 500, "event_type": "token_rejected"}).json()["entries"]
        assert len(entries) == 20  # the per-address budget; 10 more were counted, not written
        throttled = a.client().get(AUDIT, params={"event_type": "peer_auth_throttled"}).json()["entries"]
        assert len(throttled) == 1 and throttled[0]["remote_addr"] == "127.0.0.1"
        assert all(e["remote_addr"] == "127.0.0.1" and e["reason"] == "malformed_token" for e in entries)
        assert all("suppressed_before" not in e["detail"] for e in entries)
        assert b_peer["status"] == "active"
    finally:
        a.stop()


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_suppressed_audit_rows_are_counted_on_the_next_window(fed: Fed, tmp_path: Path, engine):
    """A node with a 3-second window (STIGMEM_AUTH_WINDOW_S) instead of a minute: rows over
    the budget are counted, and the first row of the next window carries the count; the
    address is served again once the window passed.

    The window is measured on the node's failure limiter and audit budget clock, which the
    test holds and moves on by hand: the failures fall in one window however slowly they are
    sent, and the window passes without waiting for it."""
    window = 3.0
    server = ServedNode(tmp_path / "short", "short", env={"STIGMEM_AUTH_WINDOW_S": str(window)},
                        database_url=engine.url("short"))
    clock = ManualClock()
    server.node.peer_auth.failures.clock = clock
    server.node.unauth_audit.clock = clock
    try:
        key_text = server.api_key
        admin = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key_text}"})
        wk = fed.b.well_known()
        rec = admin.post(PEER_PATH, json=wk["declaration"]).json()
        assert admin.post(f"{PEER_PATH}/{rec['peer_id']}/approve",
                          json={"pubkey_fingerprint": wk["pubkey_fingerprint"]}).json()["status"] == "active"
        a_id = httpx.get(server.url + "/.well-known/stigmem").json()["node_id"]
        good = tokens.mint(issuer=fed.b_id, audience=a_id, private_key=fed.b_key, key_id=fed.b_kid,
                           scopes=["public"], now_ms=now_ms(), htm="GET", htu=PULL)
        addr = new_addr()
        with httpx.Client(base_url=server.url, timeout=30, transport=httpx.HTTPTransport(local_address=addr)) as c:
            t0 = clock()
            for i in range(30):
                assert_error(c.get(PULL, headers={"Authorization": f"Bearer bad.{i}"}), 401, "malformed_token")
            assert clock() - t0 < window, "the 30 failures must fall in one window"
            res = c.get(PULL, headers={"Authorization": f"Bearer {good}"})
            assert_error(res, 429, "too_many_failed_attempts")
            assert 1 <= int(res.headers["Retry-After"]) <= window + 1
            clock.advance(window + 0.3)
            assert_error(c.get(PULL, headers={"Authorization": "Bearer bad.again"}), 401, "malformed_token")
            assert c.get(PULL, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        rows = admin.get(AUDIT, params={"limit": 500, "event_type": "token_rejected"}).json()["entries"]
        assert len(rows) == 21
        assert all("suppressed_before" not in r["detail"] for r in rows[:20])
        assert rows[20]["detail"]["suppressed_before"] == 10 and rows[20]["remote_addr"] == addr
        admin.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------- property test

B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
JSON_LEAF = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
             | st.floats() | st.text(max_size=20) | st.sampled_from([0, 10**15, 10**15 + 1, -1, 1.0, "GET", ""]))
JSON_VALUES = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                           max_size=3), max_leaves=6)
CLAIM_NAMES = ["iss", "sub", "iat", "exp", "nbf", "nonce", "scopes", "htm", "htu", "extra"]
HEADER_NAMES = ["alg", "typ", "kid", "crit", "b64", "jku"]


@st.composite
def bearer_values(draw) -> str:
    kind = draw(st.sampled_from(["text", "chars", "claims", "claims", "claims", "header", "segments"]))
    if kind == "text":
        text = draw(st.text(alphabet=PRINTABLE, max_size=300)) + draw(
            st.sampled_from(["", ".", "..", ".a.b", ".e30.e30."]))
        return draw(st.sampled_from(["Bearer ", "bearer ", "", "Bearer  ", "Token "])) + text
    fed_: Fed = FED_FOR_HYPOTHESIS[0]
    if kind == "chars":
        token = fed_.mint(PULL)
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
            i = draw(st.integers(0, max(0, len(token) - 1)))
            ch = draw(st.sampled_from(B64_CHARS + ".=+/ "))
            if op == "replace":
                token = token[:i] + ch + token[i + 1:]
            elif op == "delete":
                token = token[:i] + token[i + 1:]
            elif op == "insert":
                token = token[:i] + ch + token[i:]
            else:
                token = token[:i]
        return "Bearer " + token.strip()
    if kind == "claims":
        claims = fed_.claims(PULL)
        t = now_ms()
        plausible = {
            "iss": st.sampled_from([fed_.a_id, fed_.b_id, fed_.c_id, UNKNOWN_NODE]),
            "sub": st.sampled_from([fed_.a_id, fed_.b_id, fed_.c_id, fed_.a_id + " "]),
            "iat": st.integers(-4_000_000, 4_000_000).map(lambda d: t + d),
            "exp": st.integers(-4_000_000, 4_000_000).map(lambda d: t + d),
            "nbf": st.integers(-100_000, 100_000).map(lambda d: t + d),
            "nonce": st.sampled_from([None, "", "x" * 128, "x" * 129, "\x00", "n\x00"]) | st.text(min_size=1, max_size=10),
            "scopes": st.lists(st.sampled_from(["local", "team", "company", "public", "galaxy"]), max_size=4),
            "htm": st.sampled_from(["GET", "get", "POST", ""]),
            "htu": st.sampled_from([PULL, PULL + "?", PULL + "?limit=1", "/", "/v1/federation/facts/"]),
            "extra": JSON_VALUES,
        }
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(CLAIM_NAMES))
            how = draw(st.sampled_from(["drop", "random", "plausible", "plausible"]))
            if how == "drop":
                claims.pop(name, None)
            else:
                claims[name] = draw(JSON_VALUES if how == "random" else plausible[name])
        return "Bearer " + jws(fed_.header(), claims, fed_.b_key)
    if kind == "header":
        header = fed_.header()
        for _ in range(draw(st.integers(1, 2))):
            name = draw(st.sampled_from(HEADER_NAMES))
            header[name] = draw(st.sampled_from(["EdDSA", "none", "HS256", "eddsa", "ES256", "jwt"]) | JSON_VALUES)
        return "Bearer " + jws(header, fed_.claims(PULL), fed_.b_key)
    token = fed_.mint(PULL)
    parts = token.split(".")
    choice = draw(st.sampled_from(["swap", "dup", "extra", "drop", "pad"]))
    if choice == "swap":
        parts[0], parts[1] = parts[1], parts[0]
    elif choice == "dup":
        parts.insert(1, parts[1])
    elif choice == "extra":
        parts.append("")
    elif choice == "drop":
        parts.pop(draw(st.integers(0, 2)))
    else:
        parts[draw(st.integers(0, 2))] += "="
    return "Bearer " + ".".join(parts)


FED_FOR_HYPOTHESIS: list[Fed] = []


@pytest.fixture
def fed_for_hypothesis(fed: Fed) -> Fed:
    FED_FOR_HYPOTHESIS[:] = [fed]
    return fed


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(auth=bearer_values())
def test_inv2_any_bearer_gets_a_4xx_with_a_stable_code_never_a_5xx(fed_for_hypothesis: Fed, auth: str):
    auth = auth.strip()
    addr = new_addr()  # each example from its own address, so every one is really verified
    res = one_request(fed_for_hypothesis.a.url, PULL, auth=auth or None, addr=addr)
    assert res.status_code < 500, res.text
    if res.status_code == 200:
        assert res.json()["v"] == 2
        event("accepted")
        return
    body = res.json()
    event(body.get("error", "?"))
    assert set(body) == ERROR_KEYS | ({"retry_after"} if res.status_code == 429 else set()), body
    assert body["error"] == body["detail"] and body["error"] in PULL_CODES, body
    assert body["error"] != "internal_validation_error", body
    expected = {"peer_not_active": 403, "scope_not_permitted": 403, "no_permitted_scopes": 403,
                "too_many_failed_attempts": 429}.get(body["error"], 401)
    assert res.status_code == expected, body


# --------------------------------------------------------------------------- invariant 7 (serving side)


@pytest.mark.slow
def test_inv7_concurrent_writes_while_paging_deliver_every_fact_exactly_once(fed_processes: Fed,
                                                                            replica_processes: RunningNode):
    """10,000 facts written by 4 threads (two through A, two through a second process on A's
    database) in batches of 100-500, while B pages with limit 500 and a fresh token per page.
    A and the second one are serve processes, so that writing and paging really run at once."""
    fed, replica = fed_processes, replica_processes
    c0 = fed.end_cursor()
    total, writers = 10_000, 4
    expected: set[str] = set()
    hidden: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []
    tag = uuid.uuid4().hex[:8]

    def write(w: int) -> None:
        rng = random.Random(w)
        url = fed.a.url if w % 2 == 0 else replica.url
        n, quota = 0, total // writers
        try:
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {fed.a.api_key}"}) as c:
                while n < quota:
                    size = min(rng.randint(100, 500), quota - n)
                    batch = [fact(f"inv7:{tag}:{w}:{n + i}", ("company", "public", "company", "public", "local",
                                                               "company", "public", "team", "public", "company")
                                  [(n + i) % 10]) for i in range(size)]
                    res = c.post("/v1/facts", json={"facts": batch})
                    assert res.status_code == 201, res.text
                    with lock:
                        for f in res.json()["facts"]:
                            (expected if f["scope"] in ("company", "public") else hidden).add(f["id"])
                    n += size
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    threading.Thread(target=lambda: ([t.join() for t in threads], done.set()), daemon=True).start()

    delivered: list[str] = []
    cursor, pages, pages_during_writes = c0, 0, 0
    while True:
        finished_before = done.is_set()
        body = fed.page(cursor=cursor, limit=500)
        pages += 1
        pages_during_writes += not done.is_set()
        delivered += ids(body["facts"])
        cursor = body["cursor"]
        if not body["has_more"]:
            if finished_before:
                break
            time.sleep(0.005)
    assert not errors, errors
    assert len(expected) + len(hidden) == total
    assert len(delivered) == len(set(delivered)), "a fact was delivered twice"
    assert set(delivered) == expected, (len(set(delivered) - expected), len(expected - set(delivered)))
    assert not hidden & set(delivered)
    assert pages_during_writes >= 5, (pages, pages_during_writes)  # the paging really raced the writers
