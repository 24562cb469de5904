"""The status page, GET /status (stigmem_node.status, sessions, http.status): sign-in and
sessions, CSRF, permissions, escaping of what peers send, the read model.  Both engines,
real nodes over HTTP.  The browser's view is tests/test_status_browser.py."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx

from stigmem_node.activity import minute_of
from stigmem_node.sessions import IDLE_S, MAX_AGE_S
from stigmem_node.status import CHART_MINUTES
from tests.test_replication import fact, federate, node_id, post_facts, pull, wait_for

CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def browser(node) -> httpx.Client:
    """A client without an API key header, keeping cookies, as a browser would."""
    return httpx.Client(base_url=node.url, timeout=10, follow_redirects=False)


def post_sign_in(c: httpx.Client, key: str, **headers: str) -> httpx.Response:
    """Load the sign-in form (its token comes with a cookie), then post ``key`` with the token."""
    token = csrf_of(c.get("/status").text)
    return c.post("/status/session", data={"api_key": key, "csrf": token}, headers=headers)


@contextlib.contextmanager
def sign_in(node, key: str | None = None) -> Iterator[httpx.Client]:
    """A browser-like client signed in on the status page with ``key`` (default: the admin key)."""
    with browser(node) as c:
        res = post_sign_in(c, key or node.api_key)
        assert res.status_code == 303, res.text
        assert res.headers["location"] == "/status"
        yield c


def csrf_of(page: str) -> str:
    m = CSRF_RE.search(page)
    assert m, "no CSRF token on the page"
    return m.group(1)


def peer_id_at(node, other) -> str:
    return node.sql("SELECT id FROM peers WHERE node_id = ?", (node_id(other),))[0][0]


def make_key(node, *permissions: str) -> tuple[str, str]:
    key, rec = node.node.apikeys.create(tuple(permissions))
    return key, rec.id


def test_without_a_session_the_page_is_a_sign_in_form_with_strict_headers(start_node):
    a = start_node("a")
    with browser(a) as c:
        res = c.get("/status")
    assert res.status_code == 200
    assert 'action="/status/session"' in res.text and 'name="api_key"' in res.text
    assert a.well_known()["node_id"] not in res.text  # nothing of the node before sign-in
    csp = res.headers["content-security-policy"]
    for part in ("default-src 'none'", "img-src data:", "form-action 'self'", "frame-ancestors 'none'"):
        assert part in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["referrer-policy"] == "no-referrer"
    assert res.headers["cache-control"] == "no-store"


def test_sign_in_sets_a_strict_cookie_and_stores_only_the_hash_of_the_session(start_node):
    a = start_node("a")
    with browser(a) as c:
        res = post_sign_in(c, a.api_key)
        assert res.status_code == 303
        cookie = next(v for v in res.headers.get_list("set-cookie") if v.startswith("stigmem_status="))
        session_id = cookie.split(";")[0].split("=", 1)[1]
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/status"} <= flags
        assert "secure" not in flags  # plain http here: a Secure cookie would never come back
        assert len(session_id) >= 43  # 256 bits
        rows = a.sql("SELECT id_hash, key_id FROM sessions")
        assert len(rows) == 1 and session_id not in rows[0][0] and rows[0][1] in a.api_key
        page = c.get("/status")
        assert page.status_code == 200
        assert a.well_known()["pubkey_fingerprint"] in page.text
        assert "Recent audit events" in page.text and 'id="audit"' in page.text


def test_a_wrong_key_or_one_without_a_reading_permission_opens_no_session(start_node):
    a = start_node("a")
    weak, _ = make_key(a, "facts:read")
    with browser(a) as c:
        bad = post_sign_in(c, a.api_key[:-2] + "xx")
        assert bad.status_code == 401 and "not valid" in bad.text and "stigmem_status" not in c.cookies
        lacking = post_sign_in(c, weak)
        assert lacking.status_code == 403 and "stigmem_status" not in c.cookies
        empty = c.post("/status/session", content=b"\xff\xfe", headers={"content-type": "text/plain"})
        assert empty.status_code == 422 and empty.json()["error"] == "invalid_request"
    with browser(a) as c:  # a sign-in posted from elsewhere lacks the form's cookie: login CSRF refused
        forged = c.post("/status/session", data={"api_key": a.api_key, "csrf": "x" * 43})
        assert forged.status_code == 403 and forged.json()["error"] == "csrf_failed"
        elsewhere = post_sign_in(c, a.api_key, origin="https://evil.example")
        assert elsewhere.status_code == 403 and elsewhere.json()["error"] == "csrf_failed"
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(0,)]


def test_failed_sign_ins_count_against_the_api_key_limiter_and_are_audited(start_node):
    a = start_node("a")
    with browser(a) as c:
        codes = [post_sign_in(c, f"stgm_000000000000_{'x' * 43}").status_code for _ in range(10)]
        assert codes == [401] * 10
        over = post_sign_in(c, a.api_key)  # even a valid key, as the API does
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    with a.client() as api:  # the same limiter: the API refuses this address too
        assert api.get("/v1/federation/peers").status_code == 429
    rows = a.sql("SELECT actor, reason FROM audit_log WHERE event_type = 'apikey_auth_throttled'")
    assert rows == [("anonymous", "too_many_failed_attempts")]


def test_hostile_peer_strings_are_escaped_and_no_external_url_is_on_the_page(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    b_at_a = peer_id_at(a, b)
    hostile_url = 'https://evil.example/"><script>alert(1)</script>'
    hostile_error = "<img src=x onerror=alert(2)>&amp;"
    a.sql("UPDATE peers SET node_url = ? WHERE id = ?", (hostile_url, b_at_a))
    a.sql("INSERT INTO replication_state (peer_id, last_error, consecutive_failures) VALUES (?, ?, 3)"
          " ON CONFLICT (peer_id) DO UPDATE SET last_error = excluded.last_error, consecutive_failures = 3",
          (b_at_a, hostile_error))
    with sign_in(a) as c:
        page = c.get("/status").text
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;&amp;amp;" in page
    assert "&quot;&gt;" in page  # the quote cannot end an attribute
    own = a.well_known()["node_url"]
    urls = re.findall(r"https?://[^\s<\"']*", page)
    assert urls, "the node's own URL is shown"
    for url in urls:
        assert url.startswith((own, "https://evil.example/")), url
    assert not re.search(r"<(script|link|img|iframe|object)\b", page, re.I)  # no script, no asset to fetch
    assert not re.search(r"<[a-z][^>]*\s(src|href)=", page, re.I)


def test_a_form_without_the_right_csrf_token_or_from_another_origin_is_refused(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    b_at_a = peer_id_at(a, b)
    with sign_in(a) as c:
        token = csrf_of(c.get("/status").text)
        for data, headers in (({}, {}), ({"csrf": "0" * 64}, {}), ({"csrf": token[:-1]}, {}),
                              ({"csrf": token}, {"origin": "https://evil.example"}),
                              ({}, {"origin": "null"})):
            res = c.post(f"/status/peers/{b_at_a}/suspend", data=data, headers=headers)
            assert res.status_code == 403 and res.json()["error"] == "csrf_failed", (data, headers, res.text)
        assert a.sql("SELECT status FROM peers WHERE id = ?", (b_at_a,)) == [("active",)]
        # Origin null (what browsers send under Referrer-Policy: no-referrer) leaves the token to decide.
        ok = c.post(f"/status/peers/{b_at_a}/suspend", data={"csrf": token}, headers={"origin": "null"})
        assert ok.status_code == 303 and ok.headers["location"] == "/status?flash=suspended"
    assert a.sql("SELECT status FROM peers WHERE id = ?", (b_at_a,)) == [("suspended",)]
    with browser(a) as anonymous:  # no session: 401, not a crash
        res = anonymous.post(f"/status/peers/{b_at_a}/resume", data={"csrf": token})
        assert res.status_code == 401 and res.json()["error"] == "session_required"


def test_actions_go_through_the_use_cases_audited_with_the_session_key(start_node):
    a, b = start_node("a"), start_node("b")
    wk = b.well_known()
    with a.client() as api:  # B registered at A, pending approval
        res = api.post("/v1/federation/peers", json=wk["declaration"])
        assert res.status_code == 201
        b_at_a = res.json()["peer_id"]
    admin, admin_id = make_key(a, "admin:federation")
    with sign_in(a, admin) as c:
        page = c.get("/status").text
        token = csrf_of(page)
        assert f'action="/status/peers/{b_at_a}/approve"' in page
        assert 'id="audit"' not in page  # no audit:read: no audit events
        wrong = c.post(f"/status/peers/{b_at_a}/approve", data={"csrf": token, "fingerprint": "sha256:" + "0" * 64})
        assert wrong.headers["location"] == "/status?flash=fingerprint_mismatch"
        assert "does not match" in c.get("/status?flash=fingerprint_mismatch").text
        assert a.sql("SELECT status FROM peers WHERE id = ?", (b_at_a,)) == [("pending_approval",)]
        done = c.post(f"/status/peers/{b_at_a}/approve", data={"csrf": token, "fingerprint": wk["pubkey_fingerprint"]})
        assert done.headers["location"] == "/status?flash=approved"
        again = c.post(f"/status/peers/{b_at_a}/resume", data={"csrf": token})  # active: cannot resume
        assert again.headers["location"] == "/status?flash=peer_status_conflict"
        assert c.post(f"/status/peers/{b_at_a}/suspend", data={"csrf": token}).status_code == 303
        assert c.post(f"/status/peers/{b_at_a}/resume", data={"csrf": token}).status_code == 303
        unknown = c.post("/status/peers/no-such-peer/suspend", data={"csrf": token})
        assert unknown.status_code == 404 and unknown.json()["error"] == "peer_not_found"
        bad_action = c.post(f"/status/peers/{b_at_a}/revoke", data={"csrf": token})
        assert bad_action.status_code == 404
    rows = a.sql("SELECT event_type, actor FROM audit_log WHERE peer_id = ? ORDER BY seq", (b_at_a,))
    assert [r for r in rows if r[0] != "peer_registered"] == [
        ("peer_approval_failed", f"apikey:{admin_id}"), ("peer_approved", f"apikey:{admin_id}"),
        ("peer_suspended", f"apikey:{admin_id}"), ("peer_resumed", f"apikey:{admin_id}")]


def test_a_session_without_admin_federation_sees_no_buttons_and_gets_403(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    b_at_a = peer_id_at(a, b)
    reader, _ = make_key(a, "audit:read")
    with sign_in(a, reader) as c:
        page = c.get("/status").text
        assert 'id="peers"' in page and b.url in page
        assert "/suspend" not in page and "/approve" not in page and "<button" in page  # sign-out only
        token = csrf_of(page)
        res = c.post(f"/status/peers/{b_at_a}/suspend", data={"csrf": token})
        assert res.status_code == 403 and res.json()["error"] == "permission_required"
    assert a.sql("SELECT status FROM peers WHERE id = ?", (b_at_a,)) == [("active",)]


def test_a_revoked_key_ends_its_session_at_the_next_request(start_node):
    a = start_node("a")
    key, key_id = make_key(a, "audit:read")
    with sign_in(a, key) as c:
        assert 'id="node-fingerprint"' in c.get("/status").text
        a.node.apikeys.revoke(key_id)
        page = c.get("/status")
        assert page.status_code == 200 and 'name="api_key"' in page.text and 'id="node-fingerprint"' not in page.text
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(0,)]


def test_sessions_expire_when_idle_and_at_their_maximum_age(start_node):
    a = start_node("a")
    with sign_in(a) as c:
        a.node.clock.offset_s = IDLE_S - 120
        assert 'id="node-fingerprint"' in c.get("/status").text  # in use: recorded as seen
        a.node.clock.offset_s = 2 * IDLE_S - 200
        assert 'id="node-fingerprint"' in c.get("/status").text  # idle < IDLE_S since the last request
        a.node.clock.offset_s = 3 * IDLE_S
        assert 'name="api_key"' in c.get("/status").text  # idle too long
    a.node.clock.offset_s = 0
    with sign_in(a) as c:
        for step in range(1, MAX_AGE_S // (IDLE_S // 2) + 1):  # used often, but only MAX_AGE_S in all
            a.node.clock.offset_s = step * (IDLE_S // 2)
            alive = 'id="node-fingerprint"' in c.get("/status").text
            assert alive == (step * (IDLE_S // 2) < MAX_AGE_S), step
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(0,)]


def test_sign_out_ends_the_session(start_node):
    a = start_node("a")
    with sign_in(a) as c:
        cookie = c.cookies.get("stigmem_status")
        token = csrf_of(c.get("/status").text)
        res = c.post("/status/session/end", data={"csrf": token})
        assert res.status_code == 303 and res.headers["location"] == "/status?flash=signed_out"
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(0,)]
    with browser(a) as c:  # the old cookie opens nothing
        c.cookies.set("stigmem_status", cookie, path="/status")
        assert 'name="api_key"' in c.get("/status").text


def test_the_page_shows_live_replication_both_ways(start_node):
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    post_facts(a, [fact(f"urn:status:{i}", "public") for i in range(4)])
    assert pull(b)[0] == 0
    b_at_a, a_at_b = peer_id_at(a, b), peer_id_at(b, a)
    wait_for(lambda: a.sql("SELECT COUNT(*) FROM peer_pulls") == [(1,)], timeout=30, what="the pull noted at A")
    report = a.node.status.report(with_audit=True)  # the read model, from this (non-loop) thread
    (peer,) = report.peers
    assert peer.peer_id == b_at_a and peer.last_pull_in is not None and peer.behind_facts == 0
    assert peer.fingerprint == b.well_known()["pubkey_fingerprint"]
    assert len(report.traffic.outbound) == CHART_MINUTES and sum(report.traffic.outbound) == 4
    assert report.traffic.first_minute == minute_of(a.node.clock.now_ms()) - CHART_MINUTES + 1
    assert 0 < len(report.audit) <= 20 and report.audit[0]["seq"] > report.audit[-1]["seq"]  # newest first
    post_facts(a, [fact("urn:status:late", "public"), fact("urn:status:mine", "local")])
    assert a.node.status.report(with_audit=False).peers[0].behind_facts == 1  # local is never served
    (at_b,) = b.node.status.report(with_audit=False).peers
    assert at_b.peer_id == a_at_b and at_b.last_pull_out is not None and at_b.lag_s is not None
    assert sum(b.node.status.report(with_audit=False).traffic.inbound) == 4
    with sign_in(b) as c:
        page = c.get("/status").text
    assert "Facts in: 4 in the last hour" in page and at_b.last_pull_out in page


def test_expired_sessions_are_deleted_at_the_next_sign_in(start_node):
    a = start_node("a")
    with sign_in(a):
        pass
    with sign_in(a):
        pass
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(2,)]
    a.node.clock.offset_s = MAX_AGE_S
    with sign_in(a):
        pass
    assert a.sql("SELECT COUNT(*) FROM sessions") == [(1,)]


def test_hostile_form_input_is_a_clear_error_never_a_500(start_node):
    a = start_node("a")
    wk_b = start_node("b").well_known()
    with a.client() as api:
        b_at_a = api.post("/v1/federation/peers", json=wk_b["declaration"]).json()["peer_id"]
    with sign_in(a) as c:
        token = csrf_of(c.get("/status").text)
        for data in ({"csrf": token, "fingerprint": "sha256:\x00"}, {"csrf": token + "\x00"}):
            res = c.post(f"/status/peers/{b_at_a}/approve", data=data)
            assert res.status_code in (403, 422), (data, res.status_code, res.text)
        surrogate = c.post(f"/status/peers/{b_at_a}/approve", content=f"csrf={token}&fingerprint=%ED%A0%80".encode(),
                           headers={"content-type": "application/x-www-form-urlencoded"})
        assert surrogate.headers["location"] == "/status?flash=fingerprint_mismatch"
        huge = c.post(f"/status/peers/{b_at_a}/approve", data={"csrf": token, "fingerprint": "f" * 20_000})
        assert huge.status_code == 422
        weird = c.post(f"/status/peers/{'x' * 300}/suspend", data={"csrf": token})
        assert weird.status_code == 404
        forged = c.get("/status", headers={"cookie": "stigmem_status=" + "%C3%A9" * 500})
        assert forged.status_code == 200 and 'name="api_key"' in forged.text
    assert a.sql("SELECT status FROM peers WHERE id = ?", (b_at_a,)) == [("pending_approval",)]
