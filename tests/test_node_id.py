"""Lookalike node ids: one validator (stigmem_node/node_id.py) refuses every character that
can make a node id look like another one, wherever a node id enters: a declaration at
registration (422 invalid_node_id, audited) and STIGMEM_NODE_ID (one line, exit 2)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stigmem_node import cli
from stigmem_node import declaration as d
from stigmem_node import node_id as n
from stigmem_node.config import from_env
from stigmem_node.errors import ConfigError
from stigmem_node.federation import Actor
from tests.fakepeer import FakePeer
from tests.inproc import InProcessNode, signed_declaration

REAL = "stigmem:node:4be895b3-188b-47a3-8a96-2b20584a25ec"

# One or more characters of every refused class, each spliced into a real-looking node id.
REFUSED = {
    "Cc": ["\x00", "\x1b", "\n", "\x7f", "\x85", "\x9b"],
    "Cf": ["\u200b", "\u200c", "\u200d", "\u200e", "\u202e", "\u2066", "\u2069", "\ufeff", "\u00ad", "\u2060",
           "\U000e0041"],
    "Co": ["\ue000", "\U000f0000"],
    "Cn": ["\u0378", "\U000e0080"],
    "Zs": [" ", "\u00a0", "\u2007", "\u3000"],
    "Zl": ["\u2028"],
    "Zp": ["\u2029"],
    "invisible": ["\u3164", "\u115f", "\u034f", "\ufe0f", "\u2800", "\U000e0100"],
}
SURROGATE = "\udcff"  # Cs: what a non-UTF-8 byte in the environment becomes (surrogateescape)
CASES = [(cls, c) for cls, chars in REFUSED.items() for c in chars]


def lookalike(c: str) -> str:
    return REAL[:20] + c + REAL[20:]


@pytest.mark.parametrize("cls,char", CASES + [("Cs", SURROGATE)])
def test_the_validator_refuses_every_invisible_or_control_character(cls, char):
    with pytest.raises(n.InvalidNodeId) as exc:
        n.check(lookalike(char))
    assert exc.value.code == "invalid_node_id" and exc.value.field == "node_id"
    assert f"U+{ord(char):04X}" in exc.value.message
    assert char == " " or char not in exc.value.message  # the message names the character, never shows it


def test_the_validator_refuses_other_non_node_ids():
    for value in ("", None, 7, "x" * 257, "e\u0301x", "0f8e3b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"):
        with pytest.raises(n.InvalidNodeId):
            n.check(value)
    assert "NFC" in _message("e\u0301x") and "UUID" in _message("0f8e3b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")


def _message(value: str) -> str:
    with pytest.raises(n.InvalidNodeId) as exc:
        n.check(value)
    return exc.value.message


def test_the_validator_accepts_ordinary_node_ids():
    for value in (REAL, "stigmem://test-node-a", "n", "x" * 256, "n\u0153ud-\u00e9t\u00e9", "\u8282\u70b9-1"):
        assert n.check(value) == value


@pytest.fixture
def inproc(tmp_path, engine):
    node = InProcessNode(tmp_path / "n.db", engine.url("n"))
    yield node
    node.close()


def test_registration_refuses_lookalike_node_ids_with_422_and_audits_each(inproc):
    for cls, char in CASES:
        res = inproc.register(signed_declaration(node_url="http://127.0.0.1:1", node_id=lookalike(char)))
        assert res.status_code == 422, (cls, repr(char), res.text)
        body = res.json()
        assert body["error"] == body["detail"] == "invalid_node_id" and body["field"] == "node_id", (cls, char)
        assert f"U+{ord(char):04X}" in body["message"]
    rows = inproc.audit("peer_registration_rejected")
    assert [r["reason"] for r in rows] == ["invalid_node_id"] * len(CASES)
    assert all(r["detail"]["field"] == "node_id" for r in rows)
    assert inproc.peers() == []


def test_a_peer_cannot_register_a_lookalike_of_another_peer(inproc):
    real = FakePeer().up()
    try:
        record = asyncio.run(inproc.node.federation.register(real.declaration(), actor=Actor("test")))
        assert record.status == "pending_approval"
        for char in ("\u200b", "\u202e", "\u2066", "\ufeff", "\u00a0"):
            spoof = real.node_id[:-4] + char + real.node_id[-4:]
            res = inproc.register(signed_declaration(node_url=real.url, node_id=spoof))
            assert res.status_code == 422 and res.json()["error"] == "invalid_node_id"
        assert [p["node_id"] for p in inproc.peers()] == [real.node_id]
    finally:
        real.down()


@pytest.mark.parametrize("cls,char", CASES + [("Cs", SURROGATE)])
def test_settings_refuse_a_lookalike_node_id(cls, char):
    with pytest.raises(ConfigError) as exc:
        from_env({"STIGMEM_NODE_ID": lookalike(char)})
    assert exc.value.code == "invalid_node_id" and "STIGMEM_NODE_ID" in exc.value.message


@pytest.mark.parametrize("char", ["\u200b", "\u202e", "\x1b", "\u3000", SURROGATE])
def test_cli_with_a_lookalike_node_id_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, char):
    monkeypatch.setenv("STIGMEM_NODE_ID", lookalike(char))
    db = tmp_path / "n.db"
    code = cli.main(["init", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "STIGMEM_NODE_ID" in err and "Traceback" not in err and char not in err
    assert not db.exists()


def test_config_and_declarations_share_the_one_validator():
    """The same rule on both edges: a bare UUID and a 257-character id fail both."""
    for value in (str(uuid.uuid4()), "x" * 257, lookalike("\u200d")):
        with pytest.raises(ConfigError):
            from_env({"STIGMEM_NODE_ID": value})
        body = signed_declaration(node_url="http://127.0.0.1:1", node_id=value)
        with pytest.raises(d.DeclarationRejected) as rejected:
            d.verified(body, datetime.now(UTC), leeway=timedelta(seconds=30))
        assert rejected.value.reason == "invalid_node_id"
