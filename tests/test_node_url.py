"""Node URLs are parsed strictly, once (stigmem_node/node_url.py), at every edge:
registration over HTTP (422 invalid_node_url, audited), ``peers add`` (one line, exit 2),
STIGMEM_NODE_URL / --node-url (one line, exit 2), and every outbound fetch (a clear
OutboundError, never an exception escaping).  A '?' or '#' cannot steer the well-known fetch
to another path of the host, and userinfo is never sent as Basic auth."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stigmem_node import cli
from stigmem_node import node_url as u
from stigmem_node.config import from_env
from stigmem_node.errors import ConfigError, OutboundError
from stigmem_node.outbound import fetch_well_known
from stigmem_node.store.peers import PeerRecord
from tests.inproc import InProcessNode, ThreadServer, signed_declaration

# The URLs of the issue, then the other ways a node URL can be wrong.
ISSUE_URLS = ["http://127.0.0.1:abc", "http://[::1", "http://[zz]:80", "http://[::1]x"]
BAD_URLS = ISSUE_URLS + [
    "http://127.0.0.1:65536", "http://127.0.0.1:99999", "http://127.0.0.1:-1", "http://127.0.0.1:0",
    "http://127.0.0.1:", "http://user:secret@127.0.0.1:8765", "http://127.0.0.1:8765/path?x=1",
    "http://127.0.0.1:8765/#frag", "http://127.0.0.1:8765?", "http://[fe80::1%25eth0]:8765", "http://127.1:8765",
    "http://0x7f.1:8765", "http://a..b:8765", "http://-a.example:8765", "http://ex ample.org",
    "http://ex\u00e4mple.org", "http://127.0.0.1:8765/a/../b", "http://127.0.0.1:8765/a//b",
    "http://127.0.0.1:8765/%2e%2e", "http:///path", "https://", "http://[::1]:80:80",
]


# -- the parser ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", BAD_URLS)
def test_the_parser_refuses_malformed_node_urls_with_invalid_node_url(text):
    with pytest.raises(u.InvalidNodeUrl) as exc:
        u.parse(text)
    assert exc.value.code == "invalid_node_url" and exc.value.field == "node_url"
    assert "secret" not in exc.value.message  # a password in userinfo is never echoed


@pytest.mark.parametrize("text,normal", [
    ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
    ("HTTPS://Node.Example.ORG/", "https://node.example.org"),
    ("http://[::1]:8765", "http://[::1]:8765"),
    ("http://[0:0:0:0:0:0:0:1]:8765", "http://[::1]:8765"),
    ("http://localhost:8765/stigmem/a-b_c.d~/", "http://localhost:8765/stigmem/a-b_c.d~"),
    ("http://node_a:8765", "http://node_a:8765"),
    ("https://xn--nd-fka.example", "https://xn--nd-fka.example"),
])
def test_the_parser_accepts_and_normalises_valid_node_urls(text, normal):
    assert str(u.parse(text)) == normal


def test_the_parser_refuses_what_is_not_a_string():
    for value in (None, 5, b"http://x", ["http://x"]):
        with pytest.raises(u.InvalidNodeUrl):
            u.parse(value)


# -- registration over HTTP ------------------------------------------------------------------
@pytest.fixture
def inproc(tmp_path, engine):
    node = InProcessNode(tmp_path / "n.db", engine.url("n"))
    yield node
    node.close()


def test_registration_with_a_malformed_node_url_is_422_invalid_node_url_and_audited(inproc):
    urls = [url for url in BAD_URLS if url.startswith("http://")]
    for url in urls:
        res = inproc.register(signed_declaration(node_url=url))
        assert res.status_code == 422, (url, res.text)
        body = res.json()
        assert body["error"] == body["detail"] == "invalid_node_url" and body["field"] == "node_url", url
        assert "Traceback" not in res.text
    rows = inproc.audit("peer_registration_rejected")
    assert [r["reason"] for r in rows] == ["invalid_node_url"] * len(urls)
    assert all(r["detail"]["field"] == "node_url" and "invalid node URL" in r["detail"]["message"] for r in rows)
    assert not any("secret" in json.dumps(r) for r in rows)
    assert inproc.peers() == []


# -- a recording peer: what did the node actually ask for? -----------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET"])])
        self.server = ThreadServer(self.app)
        self.url = self.server.url

    async def handle(self, request: Request) -> Response:
        self.requests.append({"path": request.url.path, "query": request.url.query,
                              "authorization": request.headers.get("authorization")})
        path = request.url.path
        redirects = {
            "/port-99999/.well-known/stigmem": "http://127.0.0.1:99999/.well-known/stigmem",
            "/port-abc/.well-known/stigmem": "http://127.0.0.1:abc/.well-known/stigmem",
            "/open-v6/.well-known/stigmem": "http://[::1/.well-known/stigmem",
            "/bad-v6/.well-known/stigmem": "http://[zz]:80/.well-known/stigmem",
            "/userinfo/.well-known/stigmem": f"http://user:secret@127.0.0.1:{self.server.port}/.well-known/stigmem",
        }
        if path in redirects:
            return Response(b"", status_code=302, headers={"location": redirects[path]})
        return JSONResponse({"node_id": "stigmem:node:recorder", "federation_pubkey": "x", "path": path})


@pytest.fixture
def recorder():
    rec = Recorder()
    with rec.server:
        yield rec


def test_a_query_or_fragment_cannot_steer_the_well_known_fetch(inproc, recorder):
    for url in (f"{recorder.url}/private/admin?", f"{recorder.url}/private/admin#", f"{recorder.url}/x?a=/"):
        res = inproc.register(signed_declaration(node_url=url))
        assert res.status_code == 422 and res.json()["error"] == "invalid_node_url", res.text
        with pytest.raises(OutboundError) as exc:
            asyncio.run(fetch_well_known(url, timeout_s=5, allow_insecure_http=False))
        assert exc.value.code == "invalid_peer_url"
    assert recorder.requests == []  # nothing was fetched, from any path


def test_a_stored_node_url_with_a_query_is_not_fetched_by_pull_or_refresh(inproc, recorder):
    """A database written before the strict parser may hold such a URL: the fetch refuses it."""
    now = inproc.node.clock.now_iso()
    peer = PeerRecord(id=str(uuid.uuid4()), node_id="stigmem:node:legacy", node_url=f"{recorder.url}/private?",
                      federation_pubkey="A" * 43, allowed_scopes=("public",), declaration={}, signed_at=now,
                      status="active", reject_reason=None, created_at=now, approved_at=now, approved_by="test",
                      updated_at=now)
    with inproc.node.store.transaction():
        inproc.node.store.peers.insert(peer, [])
    result = asyncio.run(inproc.node.subscriber().run_pass())
    assert [p.error_code for p in result.peers] == ["invalid_peer_url"]
    assert asyncio.run(inproc.node.federation.refresh_peer_keys(peer)) == "well_known_unreachable"
    assert recorder.requests == []


def test_userinfo_is_never_sent_as_basic_auth(inproc, recorder):
    url = f"http://user:secret@127.0.0.1:{recorder.server.port}"
    res = inproc.register(signed_declaration(node_url=url))
    assert res.status_code == 422 and res.json()["error"] == "invalid_node_url"
    with pytest.raises(OutboundError) as exc:
        asyncio.run(fetch_well_known(url, timeout_s=5, allow_insecure_http=False))
    assert exc.value.code == "invalid_peer_url" and "secret" not in exc.value.message
    assert recorder.requests == []
    # Nor through a same-origin redirect whose Location carries userinfo.
    with pytest.raises(OutboundError) as exc:
        asyncio.run(fetch_well_known(f"{recorder.url}/userinfo", timeout_s=5, allow_insecure_http=False))
    assert exc.value.code == "redirect_refused" and "secret" not in exc.value.message
    assert [r["authorization"] for r in recorder.requests] == [None]


@pytest.mark.parametrize("prefix", ["port-99999", "port-abc", "open-v6", "bad-v6"])
def test_a_redirect_to_an_unparsable_location_is_redirect_refused(recorder, prefix):
    with pytest.raises(OutboundError) as exc:
        asyncio.run(fetch_well_known(f"{recorder.url}/{prefix}", timeout_s=5, allow_insecure_http=False))
    assert exc.value.code == "redirect_refused"


def test_registration_of_a_peer_that_redirects_to_port_99999_is_rejected_and_audited_not_500(inproc, recorder):
    decl = signed_declaration(node_url=f"{recorder.url}/port-99999")
    res = inproc.register(decl)
    assert res.status_code == 201, res.text
    assert res.json()["status"] == "rejected" and res.json()["reason"] == "well_known_unreachable"
    (row,) = inproc.audit("peer_registration_rejected")
    assert row["reason"] == "well_known_unreachable" and row["detail"]["fetch_error"] == "redirect_refused"
    assert [r["path"] for r in recorder.requests] == ["/port-99999/.well-known/stigmem"]


# -- the command line ---------------------------------------------------------------------------
def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("STIGMEM_NODE_URL", "STIGMEM_NODE_ID", "STIGMEM_DB_PATH"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("url", BAD_URLS)
def test_cli_peers_add_with_a_malformed_url_is_one_line_and_exit_2(tmp_path, capsys, clean_env, url):
    db = str(tmp_path / "n.db")
    assert run_main(capsys, "init", "--db", db)[0] == 0
    code, out, err = run_main(capsys, "peers", "add", url, "--db", db)
    assert code == 2 and out == "", (url, out, err)
    assert len(err.strip().splitlines()) == 1 and "invalid node URL" in err and "Traceback" not in err, err
    assert "secret" not in err


@pytest.mark.parametrize("url", ISSUE_URLS + ["http://127.0.0.1:99999", "http://user:secret@127.0.0.1:1"])
def test_cli_peers_add_with_a_declaration_file_naming_a_malformed_url_is_exit_2(tmp_path, capsys, clean_env, url):
    db = str(tmp_path / "n.db")
    assert run_main(capsys, "init", "--db", db)[0] == 0
    path = tmp_path / "decl.json"
    path.write_text(json.dumps(signed_declaration(node_url=url)))
    code, out, err = run_main(capsys, "peers", "add", "http://127.0.0.1:1", "--declaration", str(path), "--db", db)
    assert code == 2 and out == "", (url, out, err)
    assert len(err.strip().splitlines()) == 1 and "invalid node URL" in err and "Traceback" not in err, err
    code, out, _ = run_main(capsys, "audit", "list", "--event-type", "peer_registration_rejected", "--json",
                            "--db", db)
    assert code == 0 and [e["reason"] for e in json.loads(out)] == ["invalid_node_url"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_settings_refuse_a_malformed_node_url(url):
    with pytest.raises(ConfigError) as exc:
        from_env({"STIGMEM_NODE_URL": url})
    assert exc.value.code == "invalid_node_url" and "STIGMEM_NODE_URL" in exc.value.message


@pytest.mark.parametrize("url", ISSUE_URLS + ["http://127.0.0.1:99999", "http://u:p@127.0.0.1:1", "http://h/?q"])
def test_cli_with_a_malformed_node_url_setting_is_one_line_and_exit_2(tmp_path, capsys, clean_env, url):
    db = tmp_path / "n.db"
    code, out, err = run_main(capsys, "init", "--db", str(db), "--node-url", url)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "node URL" in err and "Traceback" not in err, err
    clean_env.setenv("STIGMEM_NODE_URL", url)
    code, out, err = run_main(capsys, "init", "--db", str(db))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "node URL" in err and "Traceback" not in err, err
    assert not db.exists()  # nothing was created


def test_a_host_that_gives_no_valid_default_node_url_is_refused_before_anything_is_recorded(tmp_path):
    """Without --node-url, the URL is http://HOST:PORT: it must be a valid node URL too."""
    from stigmem_node import cli

    db = tmp_path / "n.db"
    for bad in ("bad_host!", "a..b"):
        assert cli.main(["init", "--db", str(db), "--host", bad]) == 2
        assert not db.exists()
    assert cli.main(["init", "--db", str(db), "--host", "127.0.0.1", "--port", "8123"]) == 0
