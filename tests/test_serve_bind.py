"""`serve` listens before it creates anything: a busy port or an unresolvable host changes nothing."""

from __future__ import annotations

import socket

import pytest

from stigmem_node.errors import ConfigError
from stigmem_node.http.server import bind
from tests.nodes import KEY_RE, free_port, run_cli


def _assert_failed_cleanly(res, db, needle: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not KEY_RE.search(res.stdout + res.stderr)  # no admin key printed
    leftovers = sorted(p.name for p in db.parent.iterdir())
    assert leftovers == [], leftovers  # no database, no -wal/-shm, no pepper file


def test_serve_on_a_port_in_use_fails_before_creating_anything(tmp_path):
    db = tmp_path / "state" / "n.db"
    db.parent.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), db=db, timeout=30)
    _assert_failed_cleanly(res, db, f"127.0.0.1:{port}")


def test_serve_on_an_unresolvable_host_fails_before_creating_anything(tmp_path):
    db = tmp_path / "state" / "n.db"
    db.parent.mkdir()
    res = run_cli("serve", "--host", "no-such-host.invalid", "--port", str(free_port()), db=db, timeout=30)
    _assert_failed_cleanly(res, db, "no-such-host.invalid")
    res = run_cli("serve", "--port", str(free_port()), db=db, env={"STIGMEM_HOST": "no-such-host.invalid"},
                  timeout=30)
    _assert_failed_cleanly(res, db, "no-such-host.invalid")


def test_bind_listens_on_every_address_and_refuses_a_busy_one():
    socks = bind("127.0.0.1", 0)
    try:
        assert len(socks) == 1
        port = socks[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # already listening: connections queue before the server runs
        with pytest.raises(ConfigError) as err:
            bind("127.0.0.1", port)
        assert err.value.code == "address_unavailable"
    finally:
        for s in socks:
            s.close()
    with pytest.raises(ConfigError) as err:
        bind("no-such-host.invalid", 8765)
    assert err.value.code == "host_unresolvable"
