"""Real nodes for tests, in this process or in their own.

- ``ServedNode``: the real ``Node`` on a real SQLite file, its real app and HTTP protocol
  (``stigmem_node.http.server.build_server``, lifespan included: group commit, audit
  sealing, the pull schedule) run by uvicorn in a thread on a 127.0.0.1 socket.  What most
  tests use: starting one takes milliseconds instead of an interpreter start.
- ``RunningNode``: ``stigmem-node serve`` as a subprocess, for what only a separate
  process shows (signals, exit codes, the first-start banner, kill -9, two processes on
  one database file, the CLI racing a server).

Both offer the same surface: ``url``, ``db``, ``database_url``, ``api_key``, ``client()``,
``well_known()``, ``cli(...)``, ``cli_json(...)``, ``sql(...)``, ``stop()``.  A node is on
PostgreSQL when given a ``database_url`` (see tests/engines.py), else on its SQLite file ``db``
(whose name, on PostgreSQL, still locates the pepper file).

``run_cli`` runs the real command line in this process (``stigmem_node.cli.main``, with
its own environment and captured output); ``run_cli_process`` runs it as a subprocess.

Ports: ``free_port`` reserves a port by keeping a socket bound to it (with SO_REUSEADDR,
never listening) for the rest of the session.  Nothing else can take it, a connection to
it is refused until a server listens there, and a server binding it with SO_REUSEADDR
(as ``stigmem-node serve``, uvicorn and asyncio all do) may still bind it: no
bind-then-close race.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests import engines

KEY_RE = re.compile(r"stgm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")

_reserved: list[socket.socket] = []
_reserved_lock = threading.Lock()


def reserve_port() -> socket.socket:
    """A socket bound to a free 127.0.0.1 port with SO_REUSEADDR and not listening: the port
    stays ours (and refuses connections) until the socket is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A 127.0.0.1 port reserved for the rest of the session (see the module docstring):
    unreachable until a server with SO_REUSEADDR binds it, and never handed to anyone else."""
    sock = reserve_port()
    with _reserved_lock:
        _reserved.append(sock)
    return sock.getsockname()[1]


def listening_socket(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (a reserved one, or 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


# A PostgreSQL node's pool in the tests: the suite runs many nodes at once on one server,
# whose connections are limited (max_connections, 100 by default).
TEST_POOL_SIZE = "8"


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMEM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["STIGMEM_DB_POOL_SIZE"] = TEST_POOL_SIZE
    env.update(extra or {})
    return env


# -- the command line ---------------------------------------------------------------------------
def _db_args(db: Path | str | None, database_url: str | None) -> list[str]:
    """The global options that name a node's database (``--database-url`` as well as ``--db``:
    the pepper file is found next to ``--db`` on either engine)."""
    out = ["--db", str(db)] if db is not None else []
    return out + (["--database-url", database_url] if database_url else [])


def run_cli_process(*args: str, db: Path | str | None = None, env: dict[str, str] | None = None,
                    cwd: Path | str | None = None, timeout: float = 30,
                    database_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (``python -m stigmem_node``)."""
    if database_url:
        engines.provide_pepper(db, env)
    cmd = [sys.executable, "-m", "stigmem_node", *args, *_db_args(db, database_url)]
    return subprocess.run(cmd, capture_output=True, text=True, env=node_env(env), cwd=cwd, timeout=timeout)


_cli_lock = threading.Lock()
_in_cli: contextvars.ContextVar[bool] = contextvars.ContextVar("in_cli", default=False)


class _CliStderr(logging.Handler):
    """What a CLI process prints of its log records: with no handler configured, Python's
    last-resort handler writes WARNING and above, message only, to stderr.  Only records of
    the command (its thread, its event loop, its worker threads) are taken, not those of
    nodes served in other threads at the same time."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        if _in_cli.get():
            self.stream.write(self.format(record) + "\n")


@contextlib.contextmanager
def cli_environment(env: dict[str, str] | None = None, cwd: Path | str | None = None) -> Iterator[None]:
    """``os.environ`` as a subprocess started with ``node_env(env)`` would see it (no
    STIGMEM_ variable but those given), and the working directory, for the duration."""
    saved = dict(os.environ)
    old_cwd = os.getcwd() if cwd is not None else None
    try:
        for k in [k for k in os.environ if k.startswith("STIGMEM_")]:
            del os.environ[k]
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        if old_cwd is not None:
            os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(saved)


_connect = sqlite3.connect
_cli_connections: contextvars.ContextVar[list[sqlite3.Connection] | None] = contextvars.ContextVar(
    "cli_connections", default=None)


def _tracked_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    conn = _connect(*args, **kwargs)
    opened = _cli_connections.get()
    if opened is not None:
        opened.append(conn)
    return conn


sqlite3.connect = _tracked_connect  # type: ignore[assignment]  # records the connections a command opens


def run_cli(*args: str, db: Path | str | None = None, env: dict[str, str] | None = None,
            cwd: Path | str | None = None, timeout: float = 30, input: str = "",
            database_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in this process: ``stigmem_node.cli.main(argv)`` with the environment
    of ``node_env(env)``, ``input`` on stdin and captured stdout and stderr; the exit code is what
    ``main`` returned (or the code of a ``SystemExit``), as the subprocess would exit with.

    An exception other than ``SystemExit`` is not turned into an exit code: it fails the
    test with its traceback.  ``timeout`` bounds ``serve`` only (see below).
    """
    from stigmem_node import cli

    if database_url:
        engines.provide_pepper(db, env)
    argv = [*args, *_db_args(db, database_url)]
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {}

    def call() -> None:
        token = _in_cli.set(True)
        opened: list[sqlite3.Connection] = []
        tracking = _cli_connections.set(opened)
        try:
            result["code"] = cli.main(argv)
        except SystemExit as exc:
            result["code"] = exc.code
        except BaseException as exc:  # raised again in the test's thread
            result["error"] = exc
        finally:
            # A process's connections end with it: close what the command left open.
            for conn in opened:
                with contextlib.suppress(sqlite3.ProgrammingError):  # made and closed by another thread
                    conn.close()
            _cli_connections.reset(tracking)
            _in_cli.reset(token)

    with _cli_lock, cli_environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        stdin, sys.stdin = sys.stdin, io.StringIO(input)
        handler = _CliStderr(err)
        logging.getLogger().addHandler(handler)
        try:
            if args[:1] == ("serve",):
                # Tests run `serve` in process only where it must refuse to start: in a thread
                # (where it could not install its signal handlers), so that a serve that
                # starts after all fails the test instead of serving for ever.
                worker = threading.Thread(target=call, name="cli-serve", daemon=True)
                worker.start()
                worker.join(timeout)
                if worker.is_alive():
                    raise AssertionError(f"stigmem-node {' '.join(argv)} was still running after {timeout} s")
            else:
                call()
        finally:
            logging.getLogger().removeHandler(handler)
            sys.stdin = stdin
    if "error" in result:
        raise result["error"]
    code = result.get("code")
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): printed to stderr, exit 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess([sys.executable, "-m", "stigmem_node", *argv], code, out.getvalue(),
                                       err.getvalue())


class _NodeSurface:
    """What tests use of a node, however it is run."""

    url: str
    db: Path
    database_url: str | None = None
    api_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        token = self.api_key if key is None else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def well_known(self) -> dict[str, Any]:
        return httpx.get(self.url + "/.well-known/stigmem", timeout=5).json()

    @property
    def target(self) -> Path | str:
        """What the node's storage opens: its PostgreSQL URL or its SQLite file."""
        return self.database_url or self.db

    @property
    def engine(self) -> str:
        return "postgresql" if self.database_url else "sqlite"

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One SQL statement on the node's database, either engine (``?`` placeholders),
        committed: its rows as tuples.  Keep the SQL portable."""
        return engines.sql(self.target, query, params)

    def cli(self, *args: str, env: dict[str, str] | None = None, input: str = "") -> subprocess.CompletedProcess:
        return run_cli(*args, db=self.db, env=env, input=input, database_url=self.database_url)

    def cli_json(self, *args: str) -> Any:
        res = self.cli(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


# -- a node in this process ---------------------------------------------------------------------
_SERVE_FLAGS = {"--node-url": "node_url", "--pull-interval": "pull_interval_s", "--trusted-proxies": "trusted_proxies",
                "--request-timeout": "request_timeout_s", "--max-connections": "max_connections",
                "--pull-wait": "pull_wait_s"}
_SERVE_TYPES = {"pull_interval_s": float, "request_timeout_s": float, "max_connections": int, "pull_wait_s": int}


def _serve_overrides(args: Sequence[str]) -> dict[str, Any]:
    """The settings of ``serve`` flags (the few tests pass)."""
    out: dict[str, Any] = {}
    items = list(args)
    while items:
        flag = items.pop(0)
        if flag == "--allow-insecure-http":
            out["allow_insecure_http"] = True
        elif flag == "--notify-peers":
            out["notify_peers"] = True
        elif flag in _SERVE_FLAGS:
            name = _SERVE_FLAGS[flag]
            out[name] = _SERVE_TYPES.get(name, str)(items.pop(0))
        else:
            raise ValueError(f"ServedNode does not know the serve flag {flag!r}; use RunningNode")
    return out


class _ThreadLog(logging.Handler):
    """The log records of one thread, formatted as `serve` formats them."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__(logging.WARNING)
        self.thread = thread
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread.ident:
            self.lines.append(self.format(record))

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class ServedNode(_NodeSurface):
    def __init__(self, workdir: Path, name: str = "node", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), port: int | None = None, db: Path | None = None,
                 log_level: str = "warning", database_url: str | None = None) -> None:
        """As ``RunningNode``, in this process: ``env`` holds the STIGMEM_ variables of the
        node (nothing else of the environment is read), ``args`` a few ``serve`` flags."""
        from stigmem_node.config import from_env
        from stigmem_node.http import create_app
        from stigmem_node.http.server import build_server
        from stigmem_node.node import Node

        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or workdir / f"{name}.db"
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        stigmem_env = {k: v for k, v in (env or {}).items() if k.startswith("STIGMEM_")}
        on_postgres = {"database_url": database_url} if database_url else {}
        if database_url:
            engines.provide_pepper(self.db, stigmem_env)
            stigmem_env.setdefault("STIGMEM_DB_POOL_SIZE", TEST_POOL_SIZE)
        self.settings = from_env(stigmem_env).with_overrides(
            db_path=self.db, host="127.0.0.1", port=self.port, log_level=log_level, **on_postgres,
            **_serve_overrides(args))
        self.node = Node(self.settings, serving=True)
        try:
            self.api_key = self.node.first_admin_key() or ""
            self._sock = listening_socket(self.port)
        except BaseException:
            self.node.close()
            raise
        s = self.settings
        self._server = build_server(create_app(self.node), request_timeout_s=s.request_timeout_s,
                                    max_connections=s.max_connections, log_level=s.log_level,
                                    on_shutdown=self.node.new_facts.close)
        self._server.config.timeout_graceful_shutdown = 5
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"node:{name}:{self.port}", daemon=True)
        self._log = _ThreadLog(self._thread)
        logging.getLogger().addHandler(self._log)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self._error!r}")
            time.sleep(0.005)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by __init__ or stop()
            self._error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def log(self) -> str:
        """What the node logged from its server thread (WARNING and above, as `serve` logs)."""
        return self._log.text()

    def begin_stop(self) -> None:
        """Ask the server to shut down (as SIGTERM does); ``stop()`` waits for it."""
        self._server.should_exit = True

    def stop(self) -> None:
        """Shut the server down (its lifespan's end included) and close the node; raises what
        the server raised, if it failed."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(15)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(10)
        self._sock.close()
        self.node.close()
        logging.getLogger().removeHandler(self._log)
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"node {self.name} failed while serving") from error


# -- a node in its own process ------------------------------------------------------------------
class RunningNode(_NodeSurface):
    def __init__(self, workdir: Path, name: str = "node", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), port: int | None = None, db: Path | None = None,
                 database_url: str | None = None, split_stderr: bool = False) -> None:
        """``db``: an existing database to serve (a second process on one node's file);
        ``database_url``: the node's PostgreSQL database instead; ``split_stderr``: the log
        (stderr) in a file of its own, ``stderr_text()``, apart from stdout (``log()``)."""
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = db or workdir / f"{name}.db"
        self.database_url = database_url
        if database_url:
            engines.provide_pepper(self.db, env)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "w") if split_stderr else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stigmem_node", "serve", *_db_args(self.db, database_url),
             "--port", str(self.port), "--host", "127.0.0.1", *args],
            stdout=self._log, stderr=self._stderr or subprocess.STDOUT, env=node_env(env), cwd=workdir,
        )
        self.api_key = ""
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            log = self.log()
            self.stop()
            raise RuntimeError(f"{self.name} did not become healthy:\n{log}")
        match = KEY_RE.search(self.log())
        self.api_key = match.group(0) if match else ""

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        """What the process wrote on stderr (``split_stderr``)."""
        return self.stderr_path.read_text(errors="replace")

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The CLI as a subprocess too: a process of its own next to the serving one."""
        return run_cli_process(*args, db=self.db, env=env, database_url=self.database_url)

    def begin_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        if self._stderr is not None:
            self._stderr.close()


_stopping: list[threading.Thread] = []
_stop_errors: list[tuple[str, BaseException]] = []


def stop_all(nodes: Sequence[ServedNode | RunningNode], *, wait: bool = False) -> None:
    """Stop nodes: ask each to shut down at once, then wait for them, in a background thread
    unless ``wait`` (a shutdown takes a fifth of a second of waiting; the next test need not
    wait for it).  ``finish_stops()`` waits for every such thread and raises what a shutdown
    raised."""
    nodes = list(nodes)
    for n in nodes:
        n.begin_stop()

    def finish() -> None:
        for n in nodes:
            try:
                n.stop()
            except BaseException as exc:  # raised again by finish_stops()
                _stop_errors.append((f"{n.name} ({n.workdir})", exc))

    if wait:
        finish()
        finish_stops()
    else:
        thread = threading.Thread(target=finish, name="stop-nodes", daemon=True)
        thread.start()
        _stopping.append(thread)


def after_stops(action: Callable[[], None], name: str = "cleanup") -> None:
    """Run ``action`` in the background once every node whose stop has begun has stopped (a
    test's databases are dropped after its nodes have let go of them); ``finish_stops()``
    waits for it too and raises what it raised."""
    pending = list(_stopping)

    def run() -> None:
        for thread in pending:
            thread.join(60)
        try:
            action()
        except BaseException as exc:  # raised again by finish_stops()
            _stop_errors.append((name, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    _stopping.append(thread)


def finish_stops() -> None:
    """Wait for the nodes stopping in the background; raise if any did not stop cleanly."""
    while _stopping:
        _stopping.pop(0).join(60)
    if _stop_errors:
        failed = list(_stop_errors)
        _stop_errors.clear()
        names = ", ".join(name for name, _ in failed)
        raise RuntimeError(f"nodes did not stop cleanly: {names}") from failed[0][1]
