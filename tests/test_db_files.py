"""The database file: private modes (0600) for it, its -wal/-shm and the pepper, and only
``init`` and ``serve`` create; every other command refuses a file that is not a node's
database and leaves it exactly as it was.

SQLite by nature (``sqlite_only``): file modes, -wal and -shm files, files that are not
databases, ``--db`` paths and SQLite's locks."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stigmem_node import cli
from stigmem_node.store import Store
from stigmem_node.store.db import schema_text
from stigmem_node.store.files import CORE_TABLES
from stigmem_node.store.sqlite import SqliteDatabase as Database
from tests import nodes
from tests.nodes import RunningNode, node_env

pytestmark = pytest.mark.sqlite_only


def run_cli(*args: str, db: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
            umask: int = -1, user: int | None = None) -> subprocess.CompletedProcess:
    """The real CLI, optionally with another umask: in process, or in a subprocess to run as
    another user."""
    if user is None:
        old = os.umask(umask) if umask >= 0 else None
        try:
            return nodes.run_cli(*args, db=db, env=env, cwd=cwd)
        finally:
            if old is not None:
                os.umask(old)
    return subprocess.run([sys.executable, "-m", "stigmem_node", *args, "--db", str(db)], capture_output=True,
                          text=True, env=node_env(env), cwd=cwd, timeout=30, umask=umask, user=user)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def world_readable(path: Path) -> Path:
    path.touch()
    os.chmod(path, 0o644)
    return path


def _snapshot(p: Path) -> tuple:
    st = os.stat(p)
    return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, stat.S_IMODE(st.st_mode), \
        sorted(os.listdir(p.parent))


@pytest.fixture
def clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("STIGMEM_")]:
        monkeypatch.delenv(name)


# -- item: the database, its -wal/-shm and the pepper are 0600 -----------------------
def test_init_on_a_world_readable_empty_file_makes_it_private_and_says_so(tmp_path):
    db = world_readable(tmp_path / "stigmem.db")
    # umask 0: nothing the process does may rely on the umask to keep the files private
    res = run_cli("init", db=db, umask=0)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0] and "0644" in lines[0] and "0600" in lines[0], res.stderr
    assert mode(db) == 0o600
    assert mode(tmp_path / "stigmem.db.pepper") == 0o600
    # SQLite gives the -wal and -shm files the database file's mode, whatever the umask.
    old = os.umask(0)
    try:
        database = Database(db, create=False)
    finally:
        os.umask(old)
    try:
        database.execute("SELECT count(*) FROM facts")
        assert mode(tmp_path / "stigmem.db-wal") == 0o600
        assert mode(tmp_path / "stigmem.db-shm") == 0o600
    finally:
        database.close()


def test_existing_world_readable_wal_and_shm_are_tightened(tmp_path):
    db = tmp_path / "n.db"
    assert run_cli("init", db=db).returncode == 0
    os.chmod(db, 0o644)
    holder = sqlite3.connect(db)  # keeps -wal and -shm in place
    try:
        holder.execute("SELECT count(*) FROM node_meta").fetchone()
        companions = [tmp_path / "n.db-wal", tmp_path / "n.db-shm"]
        for p in companions:
            os.chmod(p, 0o644)
        res = run_cli("info", "--json", db=db)
        assert res.returncode == 0, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 3 and "Traceback" not in res.stderr, res.stderr
        for p in (db, *companions):
            assert mode(p) == 0o600, p
            assert any(str(p) in line and "0644" in line for line in lines), (p, lines)
    finally:
        holder.close()


def test_a_world_readable_pepper_file_is_tightened(tmp_path):
    db = tmp_path / "n.db"
    assert run_cli("init", db=db).returncode == 0
    pepper = tmp_path / "n.db.pepper"
    os.chmod(pepper, 0o644)
    res = run_cli("apikey", "create", "--permissions", "facts:read", db=db)
    assert res.returncode == 0, res.stderr
    assert mode(pepper) == 0o600 and str(pepper) in res.stderr and "0644" in res.stderr


def test_a_serving_nodes_files_are_private(tmp_path):
    db = world_readable(tmp_path / "s.db")
    node = RunningNode(tmp_path, "s", db=db)
    try:
        for name in ("s.db", "s.db-wal", "s.db-shm", "s.db.pepper"):
            assert mode(tmp_path / name) == 0o600, name
        assert re.search(rf"{re.escape(str(db))} had mode 0644.*0600", node.log())
    finally:
        node.stop()


def _main_as(uid: int, argv: list[str]) -> tuple[int, str]:
    """``cli.main(argv)`` in a forked child running as ``uid``: (exit code, stderr)."""
    import stigmem_node.node  # noqa: F401  (imported before the switch: the child may not read the interpreter's files)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")
            os.setgid(uid)
            os.setuid(uid)
            code = cli.main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        err = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs a file owned by another user: run as root to switch to nobody")
def test_a_file_that_cannot_be_made_private_is_refused(clean_env):
    # A world-readable node database owned by root, opened by another user (nobody),
    # whose chmod then really fails: one line, exit 2, nothing changed.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chmod(root, 0o1777)  # like /tmp: nobody may add its -wal/-shm files
        db = root / "n.db"
        assert run_cli("init", db=db).returncode == 0
        os.chmod(db, 0o644)
        before = _snapshot(db)[:3]
        for command in (["info"], ["init"]):
            code, err = _main_as(65534, [*command, "--db", str(db)])
            assert code == 2, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "cannot be made private" in lines[0] and str(db) in lines[0], err
            assert _snapshot(db)[:3] == before  # bytes, mtime and mode


# -- item: only init and serve create --------------------------------------------------
def _empty(p: Path) -> None:
    p.touch()


def _unrelated(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()


def _unrelated_wal(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()


def _text(p: Path) -> None:
    p.write_text("name,value\nalpha,1\n", encoding="utf-8")


def _one_byte(p: Path) -> None:
    p.write_bytes(b"x")  # SQLite itself would take this for an empty database and overwrite it


def _schema_version_0(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.executescript(schema_text())  # every table of a node, but user_version never set
    conn.close()


KINDS = {"empty": _empty, "unrelated_sqlite": _unrelated, "unrelated_wal_sqlite": _unrelated_wal, "text": _text,
         "one_byte": _one_byte, "schema_version_0": _schema_version_0}
COMMANDS = {"info": ["info"], "peers_list": ["peers", "list"], "audit_list": ["audit", "list"],
            "facts_list": ["facts", "list"], "apikey_list": ["apikey", "list"], "pull": ["pull"]}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_refuse_a_file_that_is_not_a_node_and_change_nothing(tmp_path, capsys, clean_env, command, kind):
    path = tmp_path / "other.db"
    KINDS[kind](path)
    os.chmod(path, 0o644)
    before = _snapshot(path)
    rc = cli.main([*COMMANDS[command], "--db", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stigmem-node: "), err
    assert "not a usable stigmem database" in lines[0] and "Traceback" not in err
    assert _snapshot(path) == before  # bytes, mtime, mode; no pepper, -wal or -shm beside it


@pytest.mark.parametrize("kind", ["unrelated_sqlite", "unrelated_wal_sqlite", "text", "one_byte", "schema_version_0"])
def test_init_refuses_a_file_that_is_someone_elses(tmp_path, capsys, clean_env, kind):
    path = tmp_path / "other.db"
    KINDS[kind](path)
    os.chmod(path, 0o644)
    before = _snapshot(path)
    rc = cli.main(["init", "--db", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a usable stigmem database" in err, (out, err)
    assert _snapshot(path) == before


def test_init_accepts_a_sqlite_database_with_nothing_in_it(tmp_path, capsys, clean_env):
    path = tmp_path / "blank.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # a valid database file with no table
    conn.close()
    assert path.stat().st_size > 0
    assert cli.main(["init", "--json", "--db", str(path)]) == 0, capsys.readouterr()
    assert cli.main(["info", "--db", str(path)]) == 0


def test_a_node_database_without_identity_is_not_given_one(tmp_path, capsys, clean_env):
    path = tmp_path / "n.db"
    Store(path).close()  # the schema, but no node id or key (as after an interrupted init)
    before = _snapshot(path)
    assert cli.main(["info", "--db", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no node identity" in err
    assert _snapshot(path) == before
    assert cli.main(["init", "--db", str(path)]) == 0  # init completes it
    assert cli.main(["info", "--db", str(path)]) == 0


def test_commands_need_no_pepper_unless_they_hash_a_key_and_never_create_one(tmp_path):
    db = tmp_path / "n.db"
    assert run_cli("init", db=db).returncode == 0
    pepper = tmp_path / "n.db.pepper"
    secret = pepper.read_text().strip()
    pepper.unlink()
    for command in (("info",), ("apikey", "list"), ("peers", "list"), ("audit", "list"), ("facts", "list")):
        res = run_cli(*command, db=db)
        assert res.returncode == 0, (command, res.stderr)
        assert not pepper.exists(), command
    res = run_cli("apikey", "create", "--permissions", "facts:read", db=db)
    assert res.returncode == 2 and not pepper.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pepper" in lines[0] and "missing" in lines[0] and "Traceback" not in res.stderr
    # With the pepper in the environment instead, it works (and still creates no file).
    env = {"STIGMEM_API_KEY_PEPPER": secret}
    assert run_cli("apikey", "create", "--permissions", "facts:read", db=db, env=env).returncode == 0
    assert not pepper.exists()


def test_read_only_commands_leave_a_node_database_untouched(tmp_path):
    db = tmp_path / "n.db"
    assert run_cli("init", db=db).returncode == 0
    before = _snapshot(db)
    for command in (("info",), ("peers", "list"), ("audit", "list"), ("facts", "list"), ("apikey", "list")):
        res = run_cli(*command, db=db, env={"STIGMEM_NODE_URL": "https://elsewhere.example.org"})
        assert res.returncode == 0, (command, res.stderr)
    assert _snapshot(db) == before  # not even the configured URL is recorded


def test_checking_a_database_keeps_the_locks_of_the_connections_already_open_on_it(tmp_path):
    # Checking a file must not open and close a descriptor of its own: that would drop this
    # process's POSIX locks, so another process's connection, closing as if it were the
    # last, would delete the -wal/-shm under the open one, which then misses new commits.
    db = tmp_path / "n.db"
    serving = Database(db)
    try:
        assert serving.one("SELECT count(*) FROM node_meta") == (0,)
        Database(db, create=False).close()  # a second connection in this process, as the server's upkeep opens
        # another process: a connection that only reads (closing, it deletes the -wal and -shm
        # if it holds the last lock), then one that writes
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM node_meta'); "
                "c.close(); c = sqlite3.connect(sys.argv[1]); "
                "c.execute(\"INSERT INTO node_meta VALUES ('probe', '1')\"); c.commit(); c.close()")
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=30)
        assert serving.one("SELECT value FROM node_meta WHERE key = 'probe'") == ("1",)
    finally:
        serving.close()


def test_core_tables_are_the_tables_of_the_schema():
    assert set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema_text())) == CORE_TABLES

