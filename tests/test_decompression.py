"""Decompression bombs: no outbound fetch decodes a body it did not ask to be encoded.

A real peer on 127.0.0.1 answers with ``Content-Encoding: gzip, gzip`` and under 3 KB that
two layers of gunzip turn into 1100 MiB.  Each fetch path (``peers add``, registration over
HTTP, key refresh, a pull page) runs in a fresh process (tests/rss_probe.py), which must end
with the stable reason ``unexpected_content_encoding`` and a peak resident memory (VmHWM;
see rss_probe.py for why not ru_maxrss) less than 50 MiB above its resident memory just
before the fetch.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stigmem_node.config import from_env
from stigmem_node.errors import OutboundError
from stigmem_node.federation import Actor
from stigmem_node.node import Node
from stigmem_node.outbound import fetch_well_known
from tests.fakepeer import BOMB_HEADERS, Behaviour, FakePeer, gzip_bomb
from tests.inproc import ThreadServer
from tests.nodes import node_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
LIMIT_KIB = 50 * 1024  # 50 MiB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    body = gzip_bomb()
    assert len(body) < 3000
    return body


@pytest.fixture
def peer():
    p = FakePeer().up()
    yield p
    p.down()


def probe(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "tests.rss_probe", *args], capture_output=True, text=True,
                         env=node_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    report["grew_kib"] = report["peak_kib"] - report["baseline_kib"]
    print(f"peak RSS grew by {report['grew_kib'] / 1024:.1f} MiB during: {' '.join(args[:3])}")
    return report


def active_peer(db: Path, peer: FakePeer) -> None:
    """Register and approve ``peer`` on the node of ``db`` (a real well-known fetch)."""
    node = Node(from_env({}).with_overrides(db_path=db))
    try:
        record = asyncio.run(node.federation.register(peer.declaration(), actor=Actor("test")))
        assert record.status == "pending_approval", record.reject_reason
        node.federation.approve(record.id, peer.fingerprint, actor=Actor("test"))
    finally:
        node.close()


def test_peers_add_refuses_a_gzip_bomb_within_50_mib(tmp_path, peer, bomb):
    peer.well_known_raw = (bomb, BOMB_HEADERS)
    assert run_cli("init", db=tmp_path / "n.db").returncode == 0
    report = probe("cli", "peers", "add", peer.url, "--db", str(tmp_path / "n.db"))
    lines = report["stderr"].strip().splitlines()
    assert report["exit"] == 1 and len(lines) == 1 and "(unexpected_content_encoding)" in lines[0], report
    assert report["grew_kib"] < LIMIT_KIB, report


def test_http_registration_refuses_a_gzip_bomb_within_50_mib_and_audits_why(tmp_path, peer, bomb):
    peer.well_known_raw = (bomb, BOMB_HEADERS)
    decl = tmp_path / "decl.json"
    decl.write_text(json.dumps(peer.declaration()))
    db = tmp_path / "n.db"
    report = probe("register", str(db), str(decl))
    assert report["exit"] == 201, report
    assert report["body"]["status"] == "rejected" and report["body"]["reason"] == "well_known_unreachable"
    assert report["grew_kib"] < LIMIT_KIB, report
    node = Node(from_env({}).with_overrides(db_path=db))
    try:
        (row,) = node.federation.history(node.federation.get(report["body"]["peer_id"]))
    finally:
        node.close()
    assert row["event_type"] == "peer_registration_rejected"
    assert row["detail"]["fetch_error"] == "unexpected_content_encoding"


def test_key_refresh_refuses_a_gzip_bomb_within_50_mib(tmp_path, peer, bomb):
    db = tmp_path / "n.db"
    active_peer(db, peer)
    peer.well_known_raw = (bomb, BOMB_HEADERS)
    report = probe("cli", "peers", "refresh", peer.node_id, "--db", str(db))
    assert report["exit"] == 1 and "well_known_unreachable" in report["stdout"], report
    assert "unexpected_content_encoding" in report["stderr"], report
    assert report["grew_kib"] < LIMIT_KIB, report


def test_a_pull_page_gzip_bomb_is_refused_within_50_mib(tmp_path, peer, bomb):
    db = tmp_path / "n.db"
    active_peer(db, peer)
    peer.add(peer.make("e:1"))
    peer.set("raw", body=bomb, headers=BOMB_HEADERS)
    report = probe("cli", "pull", "--db", str(db), "--json")
    assert report["exit"] == 1, report
    (result,) = json.loads(report["stdout"])["peers"]
    assert result["error_code"] == "unexpected_content_encoding", result
    assert report["grew_kib"] < LIMIT_KIB, report
    assert len(peer.hits) == 1  # refused at once, not retried nor halved


# -- the one fetch path, in process ---------------------------------------------------------------
ENCODINGS = ["", "identity", "gzip", "gzip, gzip", "deflate", "br", "zstd", "compress", "x-gzip", "identity, gzip"]


class EncodingServer:
    """Answers ``/{i}/.well-known/stigmem`` with Content-Encoding ``ENCODINGS[i]`` (none for
    ""), over a plain body for "" and identity and a gzip bomb otherwise, and records the
    Accept-Encoding of every request."""

    def __init__(self, bomb: bytes) -> None:
        self.accept: list[str | None] = []
        self.bomb = bomb
        self.server = ThreadServer(Starlette(routes=[Route("/{i:int}/.well-known/stigmem", self.handle)]))

    async def handle(self, request: Request) -> Response:
        self.accept.append(request.headers.get("accept-encoding"))
        enc = ENCODINGS[request.path_params["i"]]
        if enc in ("", "identity"):
            return Response(b'{"node_id": "n"}', media_type="application/json",
                            headers={"Content-Encoding": enc} if enc else None)
        return Response(self.bomb, media_type="application/json", headers={"Content-Encoding": enc})


@pytest.fixture
def enc_server(bomb):
    srv = EncodingServer(bomb)
    with srv.server:
        yield srv


def well_known(url: str) -> dict:
    return asyncio.run(fetch_well_known(url, timeout_s=5, allow_insecure_http=False))


def test_only_identity_is_asked_for_and_accepted(enc_server):
    base = enc_server.server.url
    assert well_known(f"{base}/0") == {"node_id": "n"}
    assert well_known(f"{base}/1") == {"node_id": "n"}
    for i, enc in enumerate(ENCODINGS[2:], start=2):
        with pytest.raises(OutboundError) as exc:
            well_known(f"{base}/{i}")
        assert exc.value.code == "unexpected_content_encoding", enc
    assert set(enc_server.accept) == {"identity"}


def test_the_subscriber_asks_for_identity_and_ignores_an_encoded_error_body(tmp_path, peer, bomb):
    """A 503 with an encoded body is still a 503 (retried), its body is never decoded."""
    db = tmp_path / "n.db"
    active_peer(db, peer)
    peer.add(peer.make("e:1"))
    peer.then(Behaviour("status", status=503, headers=BOMB_HEADERS))
    node = Node(from_env({}).with_overrides(db_path=db))
    try:
        sub = node.subscriber(replace(node.pull_options(), backoff_s=0.0))
        result = asyncio.run(sub.run_pass())
    finally:
        node.close()
    assert result.ok and result.peers[0].new == 1, result.as_dict()
    assert [h.kind for h in peer.hits] == ["status", "ok"]
