from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx._transports.default as _httpx_transports
import pytest

from tests import engines
from tests.engines import Engine
from tests.nodes import RunningNode, ServedNode, after_stops, finish_stops, stop_all

# Every httpx client builds an SSL context from the system's CA bundle (tens of ms), even
# for plain-http loopback; clients in tests and in the nodes served in this process share
# one per configuration instead.  Only https would use it, and nothing here speaks https.
_create_ssl_context = _httpx_transports.create_ssl_context


@functools.lru_cache(maxsize=8)
def _cached_ssl_context(verify: bool, trust_env: bool, cert_file: str | None, cert_dir: str | None):
    return _create_ssl_context(verify=verify, trust_env=trust_env)


def _ssl_context(verify=True, cert=None, trust_env=True):
    if isinstance(verify, bool) and cert is None:
        return _cached_ssl_context(verify, trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)


_httpx_transports.create_ssl_context = _ssl_context


# -- the storage engines (tests/engines.py) -----------------------------------------------------
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses ``engine`` (itself or through a fixture) runs once per engine, or on
    SQLite only if marked ``sqlite_only``, or on PostgreSQL only if marked ``postgres_only``
    (replicas: several processes on one database)."""
    if "engine" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("sqlite_only")  # sqlite_only(False): a module's exception
    only = marker is not None and (not marker.args or marker.args[0])
    names = ["sqlite"] if only else list(engines.ENGINES)
    if metafunc.definition.get_closest_marker("postgres_only"):
        names = ["postgresql"]
    metafunc.parametrize("engine", names, indirect=True, ids=[engines.ENGINE_IDS[n] for n in names])


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The storage engine of the test (parametrized by ``pytest_generate_tests``); on
    PostgreSQL each node named in the test gets a database of its own, dropped afterwards."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql":
        problem = engines.postgres_problem()
        if problem is not None:
            if engines.postgres_required():
                pytest.fail(f"{engines.REQUIRE_ENV}=1 but {problem}", pytrace=False)
            pytest.skip(f"{engines.SKIP_PREFIX} {problem}")
    current = Engine(name)
    yield current
    current.drop_all(lambda drop: after_stops(drop, f"drop the databases of {request.node.nodeid}"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the PostgreSQL tests skipped for want of a server (in the xdist controller too),
    and give them one location, so that -ra folds them into one line."""
    if report.skipped and report.when == "setup" and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if engines.SKIP_PREFIX in reason:
            _skipped.append(reason.split(engines.SKIP_PREFIX, 1)[1].strip())
            report.longrepr = (engines.__file__, engines.postgres_problem.__wrapped__.__code__.co_firstlineno,
                               reason)


_skipped: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"!!! {_skipped[0]}: {len(_skipped)} PostgreSQL tests SKIPPED "
            f"(set {engines.ADMIN_URL_ENV}; {engines.REQUIRE_ENV}=1 makes this a failure) !!!",
            red=True, bold=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop what is left of this process's PostgreSQL databases (the template among them)."""
    server = engines.server_if_used()
    if server is not None:
        server.drop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (``-n``), the tests of one interop module run in one worker, as they
    share their reference nodes (module fixtures); every other test may run in any worker."""
    for item in items:
        if item.get_closest_marker("interop") is not None:
            item.add_marker(pytest.mark.xdist_group(f"interop:{item.module.__name__}"))


@pytest.fixture(scope="session", autouse=True)
def _nodes_stopped() -> Iterator[None]:
    """Every node stopped in the background has stopped, cleanly, by the end of the session."""
    yield
    finish_stops()


DEFAULT_SEED = 20_261_130


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The seed of a test's random choices: fixed, so that a run can be repeated; another one
    with TEST_SEED=<n>.  A failing test that used it shows it in its report."""
    value = int(os.environ.get("TEST_SEED", DEFAULT_SEED))
    request.node.stash[_SEED] = value
    return value


_SEED = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and _SEED in item.stash:
        report.sections.append(("seed", f"TEST_SEED={item.stash[_SEED]}"))
    return report


@pytest.fixture
def start_node(tmp_path: Path, engine: Engine) -> Iterator[Callable[..., ServedNode]]:
    """Start real nodes served in this process (see tests/nodes.py), on the test's engine; all
    are stopped at teardown."""
    started: list[ServedNode] = []

    def start(name: str = "node", env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> ServedNode:
        node = ServedNode(tmp_path / name, name, env=env, args=args, database_url=engine.url(name))
        started.append(node)
        return node

    yield start
    stop_all(started)


@pytest.fixture
def start_process_node(tmp_path: Path, engine: Engine) -> Iterator[Callable[..., RunningNode]]:
    """Start real nodes as `stigmem-node serve` subprocesses, on the test's engine; all are
    stopped at teardown."""
    started: list[RunningNode] = []

    def start(name: str = "node", env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> RunningNode:
        node = RunningNode(tmp_path / name, name, env=env, args=args, database_url=engine.url(name))
        started.append(node)
        return node

    yield start
    stop_all(started)


@pytest.fixture
def node(start_node) -> ServedNode:
    return start_node("a")


@pytest.fixture
def pair(start_node) -> tuple[ServedNode, ServedNode]:
    """Two real nodes, a and b, not yet peered."""
    return start_node("a"), start_node("b")
