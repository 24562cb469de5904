"""`facts add` validates every value type exactly as the HTTP API does (issue 8.10).

`facts add e r maybe --type boolean` used to store false, and so did `on`, `y` and
`ture`.  Each case below goes through the real CLI (in process, on a real SQLite file) and
the same value, spelled as JSON, through the real HTTP API of a node on another file:
both must accept it and store the same value, or both must refuse it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from stigmem_node import cli
from stigmem_node.http import create_app
from stigmem_node.node import Node
from tests.engines import provide_pepper

# (type, CLI text, the JSON an HTTP client would send for it, or None where no JSON value is meant)
CASES = [
    ("boolean", "true", "true"), ("boolean", "false", "false"),
    ("boolean", "maybe", '"maybe"'), ("boolean", "on", '"on"'), ("boolean", "y", '"y"'),
    ("boolean", "ture", '"ture"'), ("boolean", "True", '"True"'), ("boolean", "1", "1"), ("boolean", "0", "0"),
    ("boolean", "", '""'),
    ("number", "42", "42"), ("number", "-1.5", "-1.5"), ("number", "6.02e23", "6.02e23"), ("number", "0", "0"),
    ("number", "abc", '"abc"'), ("number", "NaN", '"NaN"'), ("number", "Infinity", '"Infinity"'),
    ("number", "1e400", "1e400"), ("number", "0x10", '"0x10"'), ("number", "007", '"007"'),
    ("number", " 42", '" 42"'), ("number", "9223372036854775808", "9223372036854775808"),
    ("null", "null", "null"), ("null", "x", '"x"'),
    ("datetime", "2026-01-01", '"2026-01-01"'), ("datetime", "yesterday", '"yesterday"'),
    ("ref", "urn:x:1", '"urn:x:1"'), ("ref", "a b", '"a b"'),
    ("string", "anything at all", '"anything at all"'),
]


@pytest.fixture
def api(tmp_path: Path, engine):
    node = Node(engine.settings(tmp_path / "api.db"), serving=True)
    key = node.first_admin_key()
    yield node, key
    node.close()


async def post_fact(node: Node, key: str, body: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(node), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return await client.post("/v1/facts", content=body, headers={"Authorization": f"Bearer {key}",
                                                                      "Content-Type": "application/json"})


@pytest.mark.parametrize("vtype,text,as_json", CASES)
def test_cli_and_http_agree_on_every_value(vtype, text, as_json, api, tmp_path: Path, capsys, engine):
    node, key = api
    db = tmp_path / "cli.db"
    db_args = [str(db), *(["--database-url", engine.url("cli")] if engine.postgres else [])]
    if engine.postgres:
        provide_pepper(db)
    assert cli.main(["init", "--db", *db_args, "--json"]) == 0
    capsys.readouterr()
    code = cli.main(["facts", "add", "e:1", "r", text, "--type", vtype, "--db", *db_args, "--json"])
    out, err = capsys.readouterr()

    body = ('{"entity":"e:1","relation":"r","source":"cli","value":{"type":"%s","v":%s}}' % (vtype, as_json)).encode()
    res = asyncio.run(post_fact(node, key, body))
    assert res.status_code in (201, 200, 422), res.text
    if res.status_code == 422:
        assert code == 1, (out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "invalid_fact" in err
        assert cli.main(["facts", "list", "--db", *db_args, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
    else:
        assert code == 0, err
        stored = json.loads(out)["value"]
        assert stored == res.json()["value"]
        assert type(stored["v"]) is type(res.json()["value"]["v"])
