from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodes import RunningNode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """Start real nodes (subprocesses on free loopback ports); all are stopped at teardown."""
    started: list[RunningNode] = []

    def start(name: str = "node", env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> RunningNode:
        node = RunningNode(tmp_path / name, name, env=env, args=args)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def node(start_node) -> RunningNode:
    return start_node("a")


@pytest.fixture
def pair(start_node) -> tuple[RunningNode, RunningNode]:
    """Two real nodes, a and b, not yet peered."""
    return start_node("a"), start_node("b")
