"""The suite's PostgreSQL half, as the README and ``.ci/run`` describe it: without a server it is
skipped with one loud line, with ``STIGMEM_TEST_REQUIRE_POSTGRES=1`` it fails instead, the
server is the one ``STIGMEM_TEST_DATABASE_URL`` names, and every database a test made is
dropped by the end of the run.  Each case runs pytest in a process of its own on a few
PostgreSQL tests of tests/test_schema_parity.py."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests import engines

ROOT = Path(__file__).resolve().parent.parent
TESTS = "tests/test_schema_parity.py"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"


def run_suite(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in (engines.REQUIRE_ENV, engines.ADMIN_URL_ENV, "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", TESTS],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_without_a_server_the_postgresql_tests_are_skipped_with_one_loud_line():
    res = run_suite({engines.ADMIN_URL_ENV: UNREACHABLE})
    assert res.returncode == 0, res.stdout + res.stderr
    loud = [line for line in res.stdout.splitlines() if line.startswith("!!!")]
    assert len(loud) == 1, res.stdout
    assert "3 PostgreSQL tests SKIPPED" in loud[0] and "127.0.0.1:1" in loud[0]
    assert engines.REQUIRE_ENV in loud[0] and "3 skipped" in res.stdout


def test_with_postgresql_required_an_unreachable_server_fails_the_run():
    res = run_suite({engines.ADMIN_URL_ENV: UNREACHABLE, engines.REQUIRE_ENV: "1"})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 errors" in res.stdout and "skipped" not in res.stdout
    assert f"{engines.REQUIRE_ENV}=1 but PostgreSQL at {UNREACHABLE} unreachable" in res.stdout


@pytest.mark.postgres_only
def test_the_postgresql_tests_run_on_the_named_server_and_drop_every_database_they_made(engine):
    worker = "suite" + secrets.token_hex(4)  # the prefix of the run's databases: stigmem_t_<worker>_
    res = run_suite({engines.ADMIN_URL_ENV: engines.admin_url(), engines.REQUIRE_ENV: "1",
                     "PYTEST_XDIST_WORKER": worker})
    assert res.returncode == 0 and "3 passed" in res.stdout, res.stdout + res.stderr
    import psycopg

    with psycopg.connect(engines.admin_url(), autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"stigmem_t_{worker}_%",)).fetchall()
    assert left == []
