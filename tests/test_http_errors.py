"""Invariants 2 and 12 at the HTTP edge of a real node: no input yields a 5xx, every
rejection is a 4xx with the ``{"error", "detail", "message"}`` shape and an
``X-Request-Id``, and request bodies are capped at 1 MiB.

Each test has a real server of its own, served in process (tests/nodes.py).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stigmem_node.encoding import b64url_encode
from tests.nodes import ServedNode

MiB = 1024 * 1024
PEERS = "/v1/federation/peers"
AUDIT = "/v1/federation/audit"
SIGNED_FIELDS = ("allowed_scopes", "federation_pubkey", "node_id", "node_url", "signed_at", "declaration_sig")


@pytest.fixture
def server(start_node) -> ServedNode:
    return start_node("e")


@pytest.fixture
def own_declaration(server) -> dict[str, Any]:
    return server.well_known()["declaration"]


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the error shape, ``code`` in both error and detail."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers.get("x-request-id"), dict(r.headers)
    body = r.json()
    assert body["error"] == code and body["detail"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


def fresh(server: ServedNode, key: str | None = None) -> httpx.Client:
    return server.client(key)


def post(server: ServedNode, path: str, **kw: Any) -> httpx.Response:
    with fresh(server) as c:
        return c.post(path, **kw)


# -- malformed bodies -------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"{", b"{'node_id': 1}", b"\xff\xfe\x00", b"{} trailing", b"", b"   \n"])
def test_inv2_malformed_json_is_400_invalid_json(server, body):
    assert_error(post(server, PEERS, content=body), 400, "invalid_json")


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"a string"', b"42", b"null", b"true"])
def test_inv2_json_that_is_not_an_object_is_422(server, body):
    assert_error(post(server, PEERS, content=body), 422, "invalid_request")
    assert_error(post(server, f"{PEERS}/anything/approve", content=body), 422, "invalid_request")


def test_inv2_json_that_is_not_an_object_names_the_field(server):
    assert "field" in post(server, PEERS, content=b"[1, 2]").json()


@pytest.mark.parametrize("field,value", [
    ("node_id", 5), ("node_url", []), ("federation_pubkey", None), ("signed_at", {}), ("declaration_sig", True),
    ("allowed_scopes", "public"), ("allowed_scopes", [1]), ("allowed_scopes", []), ("node_url", "ftp://x"),
    ("signed_at", "yesterday"), ("node_id", ""), ("node_id", "x" * 5000),
])
def test_inv2_wrong_types_in_a_declaration_are_422_naming_the_field(server, own_declaration, field, value):
    body = {**own_declaration, field: value}
    assert_error(post(server, PEERS, json=body), 422, "malformed_declaration", field=field)


@pytest.mark.parametrize("missing", SIGNED_FIELDS)
def test_inv2_missing_declaration_field_is_422_naming_it(server, own_declaration, missing):
    body = {k: v for k, v in own_declaration.items() if k != missing}
    assert_error(post(server, PEERS, json=body), 422, "malformed_declaration", field=missing)


def test_inv2_unknown_scope_in_a_declaration_is_422_invalid_scope(server, own_declaration):
    body = {**own_declaration, "allowed_scopes": ["public", "galaxy"]}
    assert_error(post(server, PEERS, json=body), 422, "invalid_scope", field="allowed_scopes")
    other = {**own_declaration, "node_id": "stigmem:node:other"}
    assert_error(post(server, PEERS, json=other, params={"scopes": "public,galaxy"}), 422, "invalid_scope",
                 field="scopes")


def test_inv2_wrong_types_in_operator_actions_are_422_naming_the_field(server):
    assert_error(post(server, f"{PEERS}/nobody/approve", json={"pubkey_fingerprint": 5}), 422,
                 "invalid_fingerprint", field="pubkey_fingerprint")
    assert_error(post(server, f"{PEERS}/nobody/approve", json={}), 422, "invalid_fingerprint",
                 field="pubkey_fingerprint")
    for action in ("suspend", "resume", "revoke"):
        assert_error(post(server, f"{PEERS}/nobody/{action}", json={"reason": ["x"]}), 422, "invalid_request",
                     field="reason")
        assert_error(post(server, f"{PEERS}/nobody/{action}", json={"reason": "r" * 501}), 422, "invalid_request",
                     field="reason")
        assert_error(post(server, f"{PEERS}/nobody/{action}"), 404, "peer_not_found")
    with fresh(server) as c:
        assert_error(c.get(PEERS, params={"status": "sleeping"}), 422, "invalid_request", field="status")


def test_inv2_conflicts_are_409_and_carry_the_peer_status(server, own_declaration):
    # A declaration whose signature no longer matches is stored as rejected (201); posting
    # it again replaces the rejected record (a rejected record never blocks a node id).
    forged = {**own_declaration, "node_id": "stigmem:node:forged-for-conflict"}
    first = post(server, PEERS, json=forged)
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "rejected" and first.json()["reject_reason"] == "invalid_signature"
    again = post(server, PEERS, json=forged)
    assert again.status_code == 201 and again.json()["peer_id"] != first.json()["peer_id"]
    not_pending = assert_error(
        post(server, f"{PEERS}/{forged['node_id']}/approve", json={"pubkey_fingerprint": "sha256:00"}),
        409, "peer_not_pending")
    assert not_pending["status"] == "rejected"
    assert_error(post(server, f"{PEERS}/{forged['node_id']}/suspend"), 409, "peer_status_conflict")
    assert_error(post(server, PEERS, json=own_declaration), 422, "cannot_peer_with_self", field="node_id")


# -- body size (invariant 12) -----------------------------------------------------------------
def test_inv12_body_over_1_mib_with_truthful_content_length_is_413(server):
    r = post(server, PEERS, content=b"x" * (MiB + 1))
    assert_error(r, 413, "body_too_large")
    assert int(r.request.headers["content-length"]) == MiB + 1


def test_inv12_body_of_exactly_1_mib_is_accepted_for_parsing(server):
    body = b'{"node_id": 5}' + b" " * (MiB - 14)
    assert len(body) == MiB
    assert_error(post(server, PEERS, content=body), 422, "malformed_declaration")


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    while total > 0:
        n = min(size, total)
        yield b" " * n
        total -= n


def test_inv12_chunked_body_over_1_mib_without_content_length_is_413(server):
    with fresh(server) as c:
        r = c.post(PEERS, content=_chunks(MiB + 1))
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "body_too_large")
    with fresh(server) as c:
        under = c.post(PEERS, content=_chunks(MiB))
    assert_error(under, 400, "invalid_json")  # 1 MiB of blanks: read in full, then refused as empty


def _raw(server: ServedNode, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, return (status, headers, body) of the first response."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body


def _head(server: ServedNode, extra: str) -> bytes:
    return (f"POST {PEERS} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.api_key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def test_inv12_content_length_claiming_more_than_1_mib_is_413_before_the_body(server):
    # The client announces 2 MiB but sends only a few bytes: refused on the header alone.
    status, headers, body = _raw(server, _head(server, f"Content-Length: {2 * MiB}\r\n") + b'{"a": 1}')
    assert status == 413
    assert headers.get("x-request-id")
    parsed = json.loads(body)
    assert parsed["error"] == parsed["detail"] == "body_too_large" and parsed["message"]


def test_inv12_understated_content_length_is_4xx_and_harmless(server):
    # Content-Length 2 then 1 MiB + 1 more bytes: the body is the 2 bytes; the excess is not
    # a body but a malformed next request, which the HTTP server itself refuses (400, plain
    # text, connection closed) before the app is involved.
    status, _, _ = _raw(server, _head(server, "Content-Length: 2\r\n") + b"{}" + b" " * (MiB + 1))
    assert 400 <= status < 500
    # Without the excess, the same request reaches the app and is judged on its 2 bytes.
    status, headers, body = _raw(server, _head(server, "Content-Length: 2\r\n") + b"{}")
    assert status == 422 and json.loads(body)["error"] == "malformed_declaration" and headers["x-request-id"]
    with fresh(server) as c:
        assert c.get("/healthz").status_code == 200


# -- routing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("GET", "/v1/federation"), ("POST", "/v1/nothing"),
                                         ("GET", "/.well-known/other"), ("DELETE", "/")])
def test_inv2_unknown_path_is_404_not_found(server, method, path):
    with fresh(server) as c:
        assert_error(c.request(method, path), 404, "not_found")


@pytest.mark.parametrize("method,path", [("DELETE", PEERS), ("PUT", AUDIT), ("POST", AUDIT),
                                         ("POST", "/.well-known/stigmem"), ("PATCH", f"{PEERS}/x/approve")])
def test_inv2_wrong_method_is_405_method_not_allowed(server, method, path):
    with fresh(server) as c:
        r = c.request(method, path)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow")


def test_request_id_is_echoed_when_sane_and_replaced_otherwise(server):
    with fresh(server) as c:
        sane = c.get("/nope", headers={"X-Request-Id": "trace-42.a_b"})
        insane = c.get("/nope", headers={"X-Request-Id": "no spaces allowed"})
        too_long = c.get("/healthz", headers={"X-Request-Id": "a" * 65})
        ok = c.get("/healthz")
    assert sane.headers["x-request-id"] == "trace-42.a_b"
    assert insane.headers["x-request-id"] not in ("", "no spaces allowed")
    assert too_long.headers["x-request-id"] != "a" * 65
    assert ok.headers["x-request-id"] and ok.headers["x-request-id"] != too_long.headers["x-request-id"]


def test_inv2_auth_errors_have_the_error_shape(server):
    with fresh(server, key="") as c:
        assert_error(c.get(AUDIT), 401, "invalid_api_key")


# -- inputs that once produced a 5xx ------------------------------------------------------------
def test_inv2_deeply_nested_json_is_4xx(server):
    r = post(server, PEERS, content=b"[" * 100_000)
    assert 400 <= r.status_code < 500, r.status_code


def test_inv2_lone_surrogate_in_a_declaration_is_4xx(server, own_declaration):
    body = json.dumps({**own_declaration, "node_id": "\ud800"}).encode()
    r = post(server, PEERS, content=body)
    assert 400 <= r.status_code < 500, r.status_code


def test_inv2_signed_at_out_of_datetime_range_is_4xx(server, own_declaration):
    body = {**own_declaration, "node_id": "stigmem:node:overflow", "signed_at": "9999-12-31T23:59:59-01:00"}
    r = post(server, PEERS, json=body)
    assert 400 <= r.status_code < 500, r.status_code


def test_inv2_declaration_with_garbage_pubkey_is_4xx_and_peers_stay_listable(node):
    body = {"node_id": "stigmem:node:garbage", "node_url": "http://127.0.0.1:1", "federation_pubkey": "x",
            "allowed_scopes": ["public"], "signed_at": "2026-01-01T00:00:00Z", "declaration_sig": "x"}
    with node.client() as c:
        r = c.post(PEERS, json=body)
    with node.client() as c:
        listed = c.get(PEERS)
    assert r.status_code < 500 and listed.status_code == 200, (r.status_code, listed.status_code)


# -- property test ------------------------------------------------------------------------------
_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
            | st.floats() | st.text(max_size=30))
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)

# Declaration-shaped objects go past the shape checks, with keys and times that are
# sometimes valid, sometimes garbage, and sometimes at the edges of the datetime range.
_b64 = st.binary(min_size=1, max_size=40).map(b64url_encode)
_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")) | st.sampled_from(
    ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "0500-01-01T00:00:00Z"])
_field_values = {
    "node_id": st.text(min_size=1, max_size=40) | json_values,
    "node_url": st.sampled_from(["http://127.0.0.1:1", "https://peer.invalid", "http://[::1]:9", "ftp://x", "http://"])
    | st.text(max_size=30).map(lambda t: "http://" + t) | json_values,
    "federation_pubkey": _b64 | json_values,
    "allowed_scopes": st.lists(st.sampled_from(["local", "team", "company", "public", "x"]), max_size=5)
    | json_values,
    "signed_at": _times | st.text(max_size=30) | json_values,
    "declaration_sig": _b64 | st.text(max_size=30) | json_values,
}
declarations = st.fixed_dictionaries({}, optional={k: v for k, v in _field_values.items()})


@st.composite
def mutated_own_declaration(draw, base: dict) -> dict:
    field = draw(st.sampled_from(SIGNED_FIELDS))
    return {**base, field: draw(_field_values[field])}


_query_values = (st.text(max_size=40) | st.integers(min_value=-10, max_value=10 ** 20).map(str)
                 | st.sampled_from(["0", "1", "500", "501", "²", "٣", "desc", "asc", "2026-11-23T00:00:00Z",
                                    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "pending_approval",
                                    "active", "peer_registered", "9" * 19]))
_query = st.dictionaries(
    st.sampled_from(["limit", "cursor", "order", "peer_id", "peer", "event_type", "since", "until", "status"])
    | st.text(max_size=8), _query_values, max_size=5)


def requests(base_declaration: dict):
    body_json = json_values | declarations | mutated_own_declaration(base_declaration)
    return st.one_of(
        st.tuples(st.just("POST"), st.just(PEERS), st.just({}), st.builds(
            lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only).encode(), body_json, st.booleans())),
        st.tuples(st.just("POST"), st.just(PEERS), _query, st.binary(max_size=300)),
        st.tuples(st.just("POST"), st.text(max_size=40).map(lambda ref: f"{PEERS}/{quote(ref, safe='')}/approve"),
                  st.just({}), (json_values | st.fixed_dictionaries({"pubkey_fingerprint": json_values})).map(
                      lambda v: json.dumps(v).encode()) | st.binary(max_size=100)),
        st.tuples(st.just("GET"), st.sampled_from([AUDIT, PEERS]), _query, st.just(b"")),
    )


def test_inv2_no_input_yields_a_5xx(server, own_declaration):
    client = server.client()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(req=requests(own_declaration))
    def check(req):
        method, path, params, body = req
        r = client.request(method, path, params=params, content=body or None)
        assert r.status_code < 500, (method, path, params, body[:200], r.status_code, r.text[:300])
        assert r.headers.get("x-request-id")
        data = r.json()
        if r.status_code >= 400:
            assert set(data) >= {"error", "detail", "message"}, data
            assert data["error"] == data["detail"] and isinstance(data["error"], str), data
            assert isinstance(data["message"], str) and data["message"], data

    try:
        check()
    finally:
        client.close()
    with server.client() as c:  # still healthy, still listable
        assert c.get(PEERS).status_code == 200
        assert c.get(AUDIT, params={"limit": 500}).status_code == 200
