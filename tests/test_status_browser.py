"""The status page in a real headless Chromium (Debian's ``chromium``, driven by Playwright;
no browser is ever downloaded).  Two real nodes federated, live data: an operator signs in
with the admin key, reads the peers table, suspends the peer and sees it suspended; the API
and the audit trail agree.  The screenshot is kept as a test artifact (path printed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_replication import fact, federate, node_id, post_facts, pull, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

sync_api = pytest.importorskip("playwright.sync_api")


def artifact(engine_name: str) -> Path:
    """tests/artifacts/status.png (SQLite) or status-postgresql.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / ("status.png" if engine_name == "sqlite" else f"status-{engine_name}.png")


def test_an_operator_signs_in_reads_the_peers_and_suspends_one_in_chromium(start_node, engine):
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    a, b = start_node("a"), start_node("b")
    federate(a, b)
    post_facts(a, [fact(f"urn:browser:{i}", "public") for i in range(5)])
    assert pull(b)[0] == 0  # B pulled from A: live data on A's page
    b_at_a = a.sql("SELECT id FROM peers WHERE node_id = ?", (node_id(b),))[0][0]
    wait_for(lambda: a.sql("SELECT COUNT(*) FROM peer_pulls WHERE peer_id = ?", (b_at_a,)) == [(1,)],
             timeout=30, what="B's pull noted at A")
    b_fingerprint = b.well_known()["pubkey_fingerprint"]
    admin_id = a.api_key.split("_")[1]

    visited: list[str] = []
    console: list[str] = []
    shot = artifact(engine.name)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.on("request", lambda r: visited.append(r.url))
            page.on("framenavigated", lambda f: visited.append(f.url))
            page.on("console", lambda m: console.append(m.text))

            page.goto(a.url + "/status")
            page.fill("#api_key", a.api_key)
            page.click("#sign-in")
            page.wait_for_selector("#peers")

            row = page.locator(f'tr[data-peer-id="{b_at_a}"]')
            assert row.locator(".fingerprint").inner_text() == b_fingerprint
            assert row.locator(".status").inner_text() == "active"
            last_pull_in = row.locator(".last-pull-in").inner_text()
            assert last_pull_in.startswith("20") and last_pull_in.endswith("Z"), last_pull_in
            assert page.locator("#node-fingerprint").inner_text() == a.well_known()["pubkey_fingerprint"]
            assert "Facts out: 5 in the last hour" in page.content()

            cookie, = [c for c in context.cookies() if c["name"] == "stigmem_status"]
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/status"
            assert page.evaluate("document.cookie") == ""  # invisible to scripts (none run anyway)

            row.locator("button.suspend").click()
            page.wait_for_selector("#flash")
            assert page.locator("#flash").inner_text() == "Peer suspended."
            row = page.locator(f'tr[data-peer-id="{b_at_a}"]')
            assert row.locator(".status").inner_text() == "suspended"
            assert row.locator("button.resume").count() == 1
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"status page screenshot: {shot}")
    assert shot.stat().st_size > 0

    assert visited and all(u.startswith(a.url + "/") for u in visited), visited  # nothing fetched elsewhere
    assert not any(a.api_key in u or admin_id + "_" in u for u in visited), "the key was in a URL"
    assert not [m for m in console if "Content Security Policy" in m], console  # nothing the page needs is blocked
    with a.client() as api:
        assert api.get(f"/v1/federation/peers/{b_at_a}").json()["status"] == "suspended"
        events = api.get("/v1/federation/audit", params={"event_type": "peer_suspended"}).json()
    entries = events["entries"] if isinstance(events, dict) else events
    assert [(e["peer_id"], e["actor"]) for e in entries] == [(b_at_a, f"apikey:{admin_id}")]
