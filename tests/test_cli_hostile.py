"""Every CLI command, given hostile arguments, prints one line on stderr and exits with
its documented code: never a traceback (issue 8.11; exit codes in docs/operating.md).

The CLI runs in process on a real node database; an uncaught exception would surface as
exit 70 ("internal error"), which no row below expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stigmem_node import cli

USAGE, FAIL = 2, 1
HUGE = "99999999999999999999"
BAD_URLS = ["http://127.0.0.1:abc", "http://[::1", "http://[zz]:80", "http://[::1]x", "http://127.0.0.1:65536",
            "http://127.0.0.1:99999", "http://127.0.0.1:-1", "http://user:pw@127.0.0.1:1",
            "http://127.0.0.1:1/#x", "http://127.0.0.1:1/?x=1", "ftp://127.0.0.1", "127.0.0.1:8765", ""]

ROWS: list[tuple[str, list[str], int]] = [
    *[(f"peers add {u!r}", ["peers", "add", u], USAGE) for u in BAD_URLS],
    ("peers add unreachable", ["peers", "add", "http://127.0.0.1:1"], FAIL),
    ("peers add --declaration missing", ["peers", "add", "http://127.0.0.1:1", "--declaration", "{tmp}/none.json"],
     USAGE),
    ("peers add --declaration not json", ["peers", "add", "http://127.0.0.1:1", "--declaration", "{tmp}/junk"], USAGE),
    ("peers add --scopes bogus", ["peers", "add", "http://127.0.0.1:1", "--scopes", "galaxy"], USAGE),
    ("peers list --status bogus", ["peers", "list", "--status", "bogus"], USAGE),
    ("peers show unknown", ["peers", "show", "nobody"], FAIL),
    ("peers approve unknown", ["peers", "approve", "nobody", "--fingerprint", "sha256:00"], FAIL),
    ("peers suspend unknown", ["peers", "suspend", "nobody"], FAIL),
    ("peers refresh unknown", ["peers", "refresh", "nobody"], FAIL),
    ("peers remove unknown", ["peers", "remove", "nobody"], FAIL),
    ("apikey create --expires-in-days huge", ["apikey", "create", "--permissions", "all", "--expires-in-days",
                                              "3000000"], USAGE),
    ("apikey create --expires-in-days 0", ["apikey", "create", "--permissions", "all", "--expires-in-days", "0"],
     USAGE),
    ("apikey create bad permission", ["apikey", "create", "--permissions", "root"], FAIL),
    ("apikey revoke unknown", ["apikey", "revoke", "zzz"], FAIL),
    ("audit export --out missing folder", ["audit", "export", "--out", "{tmp}/missing/dir/x.jsonl"], USAGE),
    ("audit export --out a folder", ["audit", "export", "--out", "{tmp}"], USAGE),
    ("audit list --limit huge", ["audit", "list", "--limit", HUGE], USAGE),
    ("audit list --limit 0", ["audit", "list", "--limit", "0"], USAGE),
    ("audit list --since garbage", ["audit", "list", "--since", "yesterday"], USAGE),
    ("audit tail -n huge", ["audit", "tail", "-n", HUGE], USAGE),
    ("audit tail --interval nan", ["audit", "tail", "--interval", "nan"], USAGE),
    ("facts list --limit int64 max", ["facts", "list", "--limit", "9223372036854775807"], USAGE),
    ("facts list --limit -1", ["facts", "list", "--limit", "-1"], USAGE),
    ("facts add boolean maybe", ["facts", "add", "e", "r", "maybe", "--type", "boolean"], FAIL),
    ("facts add number huge", ["facts", "add", "e", "r", "1" * 400, "--type", "number"], FAIL),
    ("facts add --confidence nan", ["facts", "add", "e", "r", "v", "--confidence", "nan"], FAIL),
    ("facts add --valid-until garbage", ["facts", "add", "e", "r", "v", "--valid-until", "soon"], FAIL),
    ("keys rotate --grace nan", ["keys", "rotate", "--grace", "nan"], USAGE),
    ("keys rotate --grace -1", ["keys", "rotate", "--grace", "-1"], USAGE),
    ("token mint unknown peer", ["token", "mint", "--peer", "nobody"], FAIL),
    ("pull unknown peer", ["pull", "--peer", "nobody"], FAIL),
    ("info on a missing database", ["info", "--db", "{tmp}/nothing-here.db"], USAGE),
    ("serve --port abc", ["serve", "--port", "abc"], USAGE),
    ("unknown command", ["frobnicate"], USAGE),
    ("unknown option", ["info", "--frobnicate"], USAGE),
]


@pytest.fixture
def db(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "node.db"
    assert cli.main(["init", "--db", str(path), "--json"]) == 0
    capsys.readouterr()
    (tmp_path / "junk").write_text("{not json")
    return path


def run(argv: list[str], db: Path) -> int:
    argv = [a.replace("{tmp}", str(db.parent)) for a in argv]
    if "--db" not in argv and argv[0] != "frobnicate":
        argv += ["--db", str(db)]
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own exits
        return int(exc.code or 0)


@pytest.mark.parametrize("name,argv,code", ROWS, ids=[r[0] for r in ROWS])
def test_hostile_arguments_give_one_line_and_the_documented_exit_code(name, argv, code, db: Path, capsys,
                                                                       monkeypatch):
    monkeypatch.delenv("STIGMEM_DEBUG", raising=False)
    assert run(argv, db) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stigmem-node"), err


JSON_ROWS = [r for r in ROWS[::3] if r[1][0] != "frobnicate" and r[1][:2] != ["serve", "--port"]]


@pytest.mark.parametrize("name,argv,code", JSON_ROWS, ids=[r[0] for r in JSON_ROWS])
def test_hostile_arguments_with_json_still_one_line(name, argv, code, db: Path, capsys, monkeypatch):
    monkeypatch.delenv("STIGMEM_DEBUG", raising=False)
    assert run([*argv, "--json"], db) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_internal_error_is_one_line_and_exit_70(db: Path, capsys, monkeypatch):
    """The last line of defence: a bug prints one line, not a traceback."""
    monkeypatch.delenv("STIGMEM_DEBUG", raising=False)

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert run(["info"], db) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError)" in err and "Traceback" not in err
    json.dumps(err)


@pytest.mark.parametrize("column,value", [("detail", "x'00ff01'"), ("actor", "CAST(x'ff41' AS TEXT)"),
                                          ("detail", "42"), ("reason", "x'c3'"), ("peer_id", "3.5")])
def test_audit_listings_show_a_tampered_row_instead_of_failing(column, value, db: Path, capsys, monkeypatch):
    """A row whose column holds a BLOB, a number, NULL or text that is not UTF-8 is listed as
    it is; `audit verify` (tests/test_audit_readonly.py) reports it as broken."""
    import sqlite3

    monkeypatch.delenv("STIGMEM_DEBUG", raising=False)
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE audit_log SET {column} = {value} WHERE seq = 1")
    conn.commit()
    conn.close()
    for argv in (["audit", "list"], ["audit", "list", "--json"], ["audit", "tail"], ["audit", "tail", "--json"],
                 ["audit", "export"]):
        assert run(argv, db) == 0, argv
        out, err = capsys.readouterr()
        assert err == "" and "apikey_created" in out, (argv, err)
    assert run(["audit", "verify"], db) == 1
    assert "BROKEN at row 1" in capsys.readouterr().out
