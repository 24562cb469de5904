"""The command line in process (click's CliRunner), on real SQLite files and PostgreSQL
databases (every command group's test runs on both engines; those about ``--db`` itself on
SQLite) and, for the peer commands, a real peer served on 127.0.0.1 with real Ed25519 keys:
every command group's output shape and exit codes, and the global options before or after
the command.

The subprocess tests (test_cli_hostile, test_apikeys, test_audit*, ...) keep covering the
installed entry point; one test below runs it too, with the global options first.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stigmem_node import cli
from tests.engines import Engine
from tests.fakepeer import FakePeer
from tests.nodes import node_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("STIGMEM_")]:
        monkeypatch.delenv(name)


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2 mixes them by default
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


# A node's --db path -> its PostgreSQL database in the [pg] runs (the ``db`` fixture): invoke()
# passes --database-url URL where a test says --db PATH, so one test runs on both engines.
_URLS: dict[str, str] = {}


def invoke(*args: str | Path, input: str | None = None) -> Result:
    argv = [str(a) for a in args]
    for i in range(len(argv) - 1):
        if argv[i] == "--db" and argv[i + 1] in _URLS:
            argv[i:i + 2] = ["--database-url", _URLS[argv[i + 1]]]
    return _runner().invoke(cli.root, argv, input=input, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stigmem-node"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def db(tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A node made by ``init``, on the test's engine: on PostgreSQL a fresh database of its own,
    which invoke() names by ``--database-url`` wherever the test passes ``--db`` this path."""
    path = tmp_path / "node.db"
    url = engine.url("node", empty=True)
    if url is not None:
        monkeypatch.setenv("STIGMEM_API_KEY_PEPPER", f"1:{secrets.token_hex(32)}")
        _URLS[str(path)] = url
    try:
        created = as_json(invoke("init", "--db", path, "--json"))
        assert created["admin_key"].startswith("stgm_")
        assert url is None or not path.exists()  # on PostgreSQL, no SQLite file was made
        yield path
    finally:
        _URLS.pop(str(path), None)


# -- main and the global options ---------------------------------------------------------------
@pytest.mark.sqlite_only  # --db handling
def test_main_returns_the_exit_code_in_process(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("stigmem-node ")
    assert cli.main([]) == cli.EXIT_USAGE
    assert "Missing command" in capsys.readouterr().err
    assert cli.main(["info", "--db", str(db), "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["node_id"].startswith("stigmem:node:")


PLACEMENTS = [
    ["--db", "{db}", "--json", "info"],
    ["info", "--db", "{db}", "--json"],
    ["--db", "{db}", "info", "--json"],
    ["--json", "info", "--db", "{db}"],
    ["--db={db}", "--js", "info"],
]


@pytest.mark.sqlite_only  # --db handling
@pytest.mark.parametrize("argv", PLACEMENTS, ids=[" ".join(a) for a in PLACEMENTS])
def test_global_options_work_before_or_after_the_command(argv: list[str], db: Path) -> None:
    info = as_json(invoke(*[a.replace("{db}", str(db)) for a in argv]))
    assert info["database"] == str(db) and info["node_id"].startswith("stigmem:node:")


@pytest.mark.sqlite_only  # --db handling
@pytest.mark.parametrize("argv", [
    ["--db", "{db}", "--json", "peers", "list"],
    ["peers", "list", "--db", "{db}", "--json"],
    ["peers", "--db", "{db}", "--json", "list"],
    ["--json", "peers", "list", "--db", "{db}"],
])
def test_global_options_around_a_command_group(argv: list[str], db: Path) -> None:
    assert as_json(invoke(*[a.replace("{db}", str(db)) for a in argv])) == []


@pytest.mark.sqlite_only  # --db handling
def test_the_db_nearest_the_command_wins(db: Path, tmp_path: Path) -> None:
    assert as_json(invoke("--db", tmp_path / "missing.db", "info", "--db", db, "--json"))["database"] == str(db)
    line = one_error_line(invoke("--db", db, "info", "--db", tmp_path / "missing.db"), 2)
    assert "no node database" in line and not (tmp_path / "missing.db").exists()


@pytest.mark.sqlite_only  # --db handling
def test_the_installed_entry_point_takes_global_options_first(db: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "stigmem_node", "--db", str(db), "--json", "peers", "list"],
                         capture_output=True, text=True, env=node_env(), timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr


# -- parsing and usage errors ------------------------------------------------------------------
USAGE_ERRORS = [
    (["frobnicate"], "No such command"),
    (["peers"], "Missing command"),
    (["peers", "show"], "Missing argument"),
    (["info", "--frobnicate"], "--frobnicate"),
    (["info", "extra"], "extra"),
    (["apikey", "create"], "--permissions"),
    (["apikey", "create", "--permissions", "all", "--label", "--json"], "--label"),
    (["peers", "list", "--status", "bogus"], "bogus"),
    (["peers", "list", "--s", "active", "--sc", "x"], "--sc"),
    (["facts", "list", "--limit", "0"], "must be from 1 to 100,000"),
    (["audit", "tail", "--interval", "nan"], "more than 0"),
    (["token", "mint"], "--peer"),
    (["token", "inspect"], "Missing argument"),
    (["demo", "--json"], "--json"),
    (["--json", "demo"], "demo takes neither --db, --database-url nor --json"),
    (["info", "--db"], "--db"),
    (["facts", "add", "e", "r", "v", "--scope", "gal\u2028axy"], "'gal\\u2028axy'"),
    (["info", "--fr\u2028ob"], "--fr"),
]


@pytest.mark.sqlite_only  # --db handling
@pytest.mark.parametrize("argv,needle", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], needle: str, db: Path) -> None:
    if argv not in (["frobnicate"], ["peers"], ["demo", "--json"], ["--json", "demo"], ["info", "--db"]):
        argv = [*argv, "--db", str(db)]
    result = invoke(*argv)
    assert result.stdout == ""
    if "--json" in argv:  # asked for JSON (even where --json is misplaced): the error is JSON
        assert result.exit_code == 2, (result.exit_code, result.stderr)
        error = json.loads(result.stderr)
        assert error["error"] == "usage_error" and needle in error["message"], error
        return
    line = one_error_line(result, 2)
    assert needle in line and line.endswith("--help)"), line


@pytest.mark.sqlite_only  # --db handling
def test_ambiguous_option_prefix_is_a_usage_error(db: Path) -> None:
    line = one_error_line(invoke("facts", "add", "e", "r", "v", "--s", "x", "--db", db), 2)
    assert "ambiguous option: --s could match --scope, --source" in line


@pytest.mark.sqlite_only  # --db handling
def test_a_unique_prefix_names_an_option_and_negative_numbers_are_values(db: Path) -> None:
    stored = as_json(invoke("facts", "add", "e:neg", "r", "-1.5", "--ty", "number", "--sco", "team", "--db", db,
                            "--js"))
    assert stored["value"]["type"] == "number" and stored["value"]["v"] == -1.5 and stored["scope"] == "team"
    stored = as_json(invoke("facts", "add", "--db", db, "--json", "e:neg", "r", "--", "--db"))
    assert stored["value"]["v"] == "--db"
    spaced = as_json(invoke("facts", "add", "e:neg", "r", "-a b", "--db", db, "--json"))
    assert spaced["value"]["v"] == "-a b"
    listed = as_json(invoke("facts", "list", "--entity", "e:neg", "--db", db, "--json"))
    assert [f["value"]["v"] for f in listed] == [-1.5, "--db", "-a b"]


def test_help_documents_arguments_options_and_environment() -> None:
    top = invoke("-h")
    assert top.exit_code == 0 and "peers" in top.stdout and "STIGMEM_DB_PATH" in top.stdout
    add = invoke("peers", "add", "--help")
    assert add.exit_code == 0 and "Arguments" in add.stdout and "the peer's node URL" in add.stdout
    assert "STIGMEM_ALLOW_INSECURE_HTTP" in add.stdout and "--db" in add.stdout
    serve = invoke("serve", "-h").stdout
    for env in ("STIGMEM_HOST", "STIGMEM_PORT", "STIGMEM_NODE_URL", "STIGMEM_FEDERATION_PULL_INTERVAL_S",
                "STIGMEM_TRUSTED_PROXIES", "STIGMEM_REQUEST_TIMEOUT_S", "STIGMEM_MAX_CONNECTIONS"):
        assert env in serve, env
    facts_add = invoke("facts", "add", "--help").stdout
    assert "boolean" in facts_add and "company" in facts_add


# -- serve, init, demo, info -------------------------------------------------------------------
def test_serve_refuses_a_port_in_use_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        line = one_error_line(invoke("serve", "--host", "127.0.0.1", "--port", str(port), "--db", tmp_path / "n.db"),
                              2)
    assert "cannot listen on" in line and not (tmp_path / "n.db").exists()
    assert "valid integer" in one_error_line(invoke("serve", "--port", "abc"), 2)


def test_init_once_then_info(db: Path) -> None:
    again = invoke("init", "--db", db)
    assert again.exit_code == 0 and "is ready in" in again.stdout and "Admin API key" not in again.stdout
    human = invoke("info", "--db", db)
    assert human.exit_code == 0
    for label in ("node id:", "node url:", "key id:", "public key:", "fingerprint:", "shares:", "declaration:"):
        assert label in human.stdout, label
    info = as_json(invoke("info", "--db", db, "--json"))
    assert set(info) >= {"node_id", "key_id", "pubkey_fingerprint", "declaration", "previous_keys"}
    assert info["pubkey_fingerprint"] in human.stdout


def test_a_fresh_init_prints_the_admin_key_once(tmp_path: Path) -> None:
    first = invoke("init", "--db", tmp_path / "x.db", "--node-url", "http://127.0.0.1:9")
    assert first.exit_code == 0 and "Admin API key (shown once" in first.stdout and "stgm_" in first.stdout
    assert as_json(invoke("info", "--json", "--db", tmp_path / "x.db"))["node_url"] == "http://127.0.0.1:9"


# -- apikey, keys, facts -----------------------------------------------------------------------
def test_apikey_create_list_revoke_with_audit_rows(db: Path) -> None:
    created = as_json(invoke("apikey", "create", "--permissions", "facts:read,audit:read", "--label", "ship",
                             "--expires-in-days", "3", "--db", db, "--json"))
    assert created["key"].startswith(f"stgm_{created['id']}_")
    assert created["permissions"] == ["audit:read", "facts:read"]
    assert created["expires_at"] is not None and created["label"] == "ship"
    human = invoke("apikey", "list", "--db", db)
    assert human.exit_code == 0 and "PERMISSIONS" in human.stdout and created["prefix"] in human.stdout
    assert created["key"] not in human.stdout
    listed = as_json(invoke("apikey", "list", "--db", db, "--json"))
    assert [k["label"] for k in listed] == ["first admin key", "ship"] and all("key" not in k for k in listed)

    revoked = invoke("apikey", "revoke", created["id"], "--db", db)
    assert revoked.exit_code == 0 and revoked.stdout.startswith("Revoked API key")
    again = invoke("apikey", "revoke", created["key"], "--db", db)
    assert again.exit_code == 0 and again.stdout.startswith("Already revoked:")
    assert "api_key_not_found" in one_error_line(invoke("apikey", "revoke", "0123456789ab", "--db", db), 1)
    assert "invalid_permissions" in one_error_line(invoke("apikey", "create", "--permissions", "root", "--db", db), 1)

    rows = as_json(invoke("audit", "list", "--db", db, "--json"))
    events = [(r["event_type"], r["detail"].get("id")) for r in rows]
    assert events == [("apikey_created", listed[0]["id"]), ("apikey_created", created["id"]),
                      ("apikey_revoked", created["id"])]
    assert rows[0]["actor"] == "node:first-start" and rows[1]["actor"].startswith("cli:")
    assert all(r["remote_addr"] == "local" for r in rows)


def test_keys_rotate(db: Path) -> None:
    before = as_json(invoke("info", "--db", db, "--json"))["key_id"]
    rotated = as_json(invoke("keys", "rotate", "--grace", "1", "--db", db, "--json"))
    assert rotated["old_key_id"] == before and rotated["key_id"] != before
    assert as_json(invoke("info", "--db", db, "--json"))["key_id"] == rotated["key_id"]
    human = invoke("keys", "rotate", "--db", db)
    assert human.exit_code == 0 and human.stdout.startswith("New signing key")
    assert "720 hours" in one_error_line(invoke("keys", "rotate", "--grace", "nan", "--db", db), 2)


def test_facts_add_and_list(db: Path) -> None:
    stored = as_json(invoke("facts", "add", "e:1", "r", "42", "--type", "number", "--scope", "public", "--db", db,
                            "--json"))
    assert stored["value"]["type"] == "number" and stored["value"]["v"] == 42
    assert stored["scope"] == "public" and stored["source"] == "cli"
    human = invoke("facts", "add", "e:1", "s", "hello", "--db", db)
    assert human.exit_code == 0 and human.stdout.startswith("Stored ") and "local" in human.stdout
    table = invoke("facts", "list", "--db", db)
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split() == ["SEQ", "SCOPE", "ENTITY", "RELATION",
                                                                             "VALUE", "FROM"]
    assert [f["relation"] for f in as_json(invoke("facts", "list", "--scope", "public", "--db", db, "--json"))] == ["r"]
    assert "invalid_fact" in one_error_line(invoke("facts", "add", "e", "r", "maybe", "--type", "boolean", "--db", db),
                                            1)
    assert invoke("facts", "list", "--entity", "nobody", "--db", db).stdout.strip() == "No facts."


# -- audit -------------------------------------------------------------------------------------
def test_audit_list_tail_export_verify_anchor(db: Path, tmp_path: Path) -> None:
    for _ in range(3):
        assert invoke("apikey", "create", "--permissions", "facts:read", "--db", db).exit_code == 0
    listed = as_json(invoke("audit", "list", "--event-type", "apikey_created", "--limit", "2", "--db", db, "--json"))
    assert [e["seq"] for e in listed] == [1, 2]
    assert set(listed[0]) == {"seq", "id", "ts", "event_type", "peer_id", "actor", "reason", "detail", "remote_addr",
                              "hash"}
    human = invoke("audit", "list", "--db", db)
    assert human.exit_code == 0 and len(human.stdout.splitlines()) == 4 and "apikey_created" in human.stdout
    assert invoke("audit", "list", "--peer", "nobody", "--db", db).stdout.strip() == "No audit entries."
    assert as_json(invoke("audit", "list", "--until", "2000-01-01T00:00:00Z", "--db", db, "--json")) == []
    assert "RFC 3339" in one_error_line(invoke("audit", "list", "--since", "yesterday", "--db", db), 2)

    tail = invoke("audit", "tail", "-n", "2", "--db", db, "--json")
    assert tail.exit_code == 0 and [e["seq"] for e in json.loads(tail.stdout)] == [3, 4]  # as audit list
    human_tail = invoke("audit", "tail", "-n", "2", "--db", db)
    assert human_tail.stdout.splitlines() == human.stdout.splitlines()[-2:]

    out = tmp_path / "export.jsonl"
    assert invoke("audit", "export", "--out", out, "--since", "2000-01-01T00:00:00Z", "--db", db).exit_code == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["seq"] for e in exported] == [1, 2, 3, 4] and exported[1]["prev_hash"] == exported[0]["hash"]
    piped = invoke("audit", "export", "--event-type", "nothing", "--db", db)
    assert piped.exit_code == 0 and piped.stdout == ""

    verified = as_json(invoke("audit", "verify", "--db", db, "--json"))
    assert verified["ok"] is True and verified["rows"] == 4
    anchor = tmp_path / "anchor.json"
    done = invoke("audit", "anchor", "--out", anchor, "--db", db)
    assert done.exit_code == 0 and done.stdout == "" and json.loads(anchor.read_text())["seq"] == 4
    checked = invoke("audit", "verify", "--anchor", anchor, "--db", db)
    assert checked.exit_code == 0 and "still holds the anchor" in checked.stdout


# -- peers, token, pull ------------------------------------------------------------------------
@pytest.fixture
def peer() -> Any:
    fake = FakePeer(name="cli").up()
    yield fake
    fake.down()


def test_peer_lifecycle_token_and_pull(db: Path, peer: FakePeer) -> None:
    added = invoke("peers", "add", peer.url, "--scopes", "public", "--db", db, "--json")
    view = as_json(added)
    assert view["status"] == "pending_approval" and view["allowed_scopes"] == ["public"]
    assert view["pubkey_fingerprint"] == peer.fingerprint
    pid = view["peer_id"]

    listing = invoke("peers", "list", "--db", db)
    assert listing.exit_code == 0 and peer.node_id in listing.stdout and "pending_approval" in listing.stdout
    assert peer.fingerprint in listing.stdout  # whole, for comparing with the peer's operator
    assert as_json(invoke("peers", "list", "--status", "active", "--db", db, "--json")) == []
    shown = as_json(invoke("peers", "show", peer.node_id, "--db", db, "--json"))
    assert shown["peer_id"] == pid and [h["event_type"] for h in shown["history"]] == ["peer_registered"]
    assert "peer_already_registered" in one_error_line(invoke("peers", "add", peer.url, "--db", db), 1)

    assert "fingerprint_mismatch" in one_error_line(
        invoke("peers", "approve", pid, "--fingerprint", "sha256:" + "0" * 64, "--db", db), 1)
    approved = invoke("peers", "approve", pid, "--fingerprint", peer.fingerprint, "--db", db)
    assert approved.exit_code == 0 and approved.stdout.strip() == f"Approved {peer.node_id}: now active."

    minted = as_json(invoke("token", "mint", "--peer", peer.node_id, "--ttl", "30", "--db", db, "--json"))
    assert minted["peer"] == peer.node_id and minted["scopes"] == ["public"] and minted["token"].count(".") == 2
    report = as_json(invoke("token", "inspect", "-", "--json", input=minted["token"] + "\n"))
    assert report["problems"] == [] and report["claims"]["sub"] == peer.node_id
    assert report["claims"]["exp"] - report["claims"]["iat"] == 30_000
    assert invoke("token", "inspect", "not-a-token").exit_code == 1

    peer.add(peer.make("e:pulled", "public", "hello"))
    summary = as_json(invoke("pull", "--db", db, "--json"))
    assert summary["peers_ok"] == 1 and summary["peers_failed"] == 0 and summary["new"] == 1
    human = invoke("pull", "--peer", peer.node_id, "--db", db)
    assert human.exit_code == 0 and "1 peers ok, 0 failed" in human.stdout
    pulled = as_json(invoke("facts", "list", "--entity", "e:pulled", "--db", db, "--json"))
    assert [f["received_from"] for f in pulled] == [peer.node_id]
    assert "peer_not_found" in one_error_line(invoke("pull", "--peer", "nobody", "--db", db), 1)

    refreshed = as_json(invoke("peers", "refresh", pid, "--db", db, "--json"))
    assert refreshed["refresh"] == "key_unchanged"
    for action, status in (("suspend", "suspended"), ("resume", "active"), ("revoke", "revoked")):
        res = invoke("peers", action, pid, "--reason", f"test {action}", "--db", db, "--json")
        assert as_json(res)["status"] == status, action
    removed = as_json(invoke("peers", "remove", pid, "--db", db, "--json"))
    assert removed["removed"] is True
    assert "peer_not_found" in one_error_line(invoke("peers", "show", pid, "--db", db), 1)

    reasons = [(e["event_type"], e["reason"]) for e in as_json(invoke("audit", "list", "--peer", pid, "--db", db,
                                                                      "--json"))]
    assert ("peer_suspended", "test suspend") in reasons and ("peer_removed", "test remove") not in reasons
    assert [t for t, _ in reasons][-1] == "peer_removed"


def test_peers_add_notes_a_declaration_that_names_another_url(db: Path, peer: FakePeer, tmp_path: Path) -> None:
    """The note compares the URL typed with the one the declaration names; the declaration
    itself is authenticated once, by the registration."""
    file = tmp_path / "decl.json"
    file.write_text(json.dumps(peer.declaration()))
    res = invoke("peers", "add", "http://127.0.0.1:9", "--declaration", file, "--db", db, "--json")
    assert f"note: the declaration names {peer.url}, not http://127.0.0.1:9" in res.stderr
    assert as_json(res)["status"] == "pending_approval"
