"""Choosing the storage engine: ``STIGMEM_DATABASE_URL`` / ``--database-url`` on every command,
clear one-line errors for a bad or unreachable URL (never its password), and the API-key
pepper of a node that replicas share."""

from __future__ import annotations

import json
import secrets

import pytest

from stigmem_node.config import Settings, from_env
from stigmem_node.errors import ConfigError
from tests.nodes import run_cli

psycopg = pytest.importorskip("psycopg")


def pepper() -> str:
    return f"1:{secrets.token_hex(32)}"


@pytest.fixture
def pg_url(engine) -> str:
    """An empty PostgreSQL database of the test's own (tests that take it are postgres_only)."""
    return engine.url("pg", empty=True)


@pytest.mark.postgres_only
def test_the_url_is_taken_from_the_flag_before_or_after_the_command_or_the_environment(pg_url, tmp_path):
    env = {"STIGMEM_API_KEY_PEPPER": pepper()}
    init = run_cli("--database-url", pg_url, "init", "--json", env=env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    node_id = json.loads(init.stdout)["node_id"]
    after = json.loads(run_cli("info", "--json", "--database-url", pg_url, env=env, cwd=tmp_path).stdout)
    from_env_ = json.loads(run_cli("info", "--json", env={**env, "STIGMEM_DATABASE_URL": pg_url}, cwd=tmp_path).stdout)
    assert after["node_id"] == from_env_["node_id"] == node_id
    assert after["database"] == pg_url
    assert list(tmp_path.iterdir()) == []  # no SQLite file, no pepper file


def test_a_bad_or_unreachable_url_is_one_line_without_the_password(tmp_path):
    bad = run_cli("info", "--database-url", "mysql://root@localhost/db", cwd=tmp_path)
    assert bad.returncode == 2 and "postgresql://" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    down = run_cli("info", "--database-url", "postgresql://stigmem:s3cret-pw@127.0.0.1:1/node", cwd=tmp_path)
    assert down.returncode == 2 and "cannot connect" in down.stderr
    assert "s3cret-pw" not in down.stderr + down.stdout and "stigmem:***@127.0.0.1:1" in down.stderr
    assert "Traceback" not in down.stderr
    with pytest.raises(ConfigError) as exc:
        from_env({"STIGMEM_DATABASE_URL": "sqlite:///x.db"})
    assert exc.value.code == "invalid_database_url"
    assert Settings(database_url="postgresql://u:pw@h:5432/d").database_label == "postgresql://u:***@h:5432/d"


@pytest.mark.postgres_only
def test_a_shared_node_never_creates_a_pepper_file_and_refuses_another_pepper(pg_url, tmp_path):
    missing = run_cli("init", "--database-url", pg_url, cwd=tmp_path)
    assert missing.returncode == 2 and "STIGMEM_API_KEY_PEPPER" in missing.stderr
    assert list(tmp_path.iterdir()) == []
    first = pepper()
    assert run_cli("init", "--database-url", pg_url, env={"STIGMEM_API_KEY_PEPPER": first}).returncode == 0
    ok = run_cli("apikey", "create", "--permissions", "facts:read", "--database-url", pg_url,
                 env={"STIGMEM_API_KEY_PEPPER": first})
    assert ok.returncode == 0, ok.stderr
    other = run_cli("apikey", "create", "--permissions", "facts:read", "--database-url", pg_url,
                    env={"STIGMEM_API_KEY_PEPPER": pepper()})
    assert other.returncode == 2 and "pepper" in other.stderr and "Traceback" not in other.stderr


def test_a_sqlite_node_records_its_pepper_check_too(tmp_path):
    db = tmp_path / "n.db"
    assert run_cli("init", db=db).returncode == 0
    (tmp_path / "n.db.pepper").write_text(pepper() + "\n")
    res = run_cli("apikey", "create", "--permissions", "facts:read", db=db)
    assert res.returncode == 2 and "pepper version 1" in res.stderr
