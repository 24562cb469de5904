"""The core is pure: it loads no storage, configuration, HTTP or CLI code, and neither
sqlite3, httpx nor starlette, so that a signature or a fact can be checked without a
database or a server."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stigmem_node"
FORBIDDEN = ("sqlite3", "httpx", "starlette", "stigmem_node.store", "stigmem_node.config")

# The core modules: they may import one another and nothing else of the package.
CORE = ("cid", "clock", "declaration", "encoding", "error_codes", "errors", "facts", "hlc", "keys",
        "manifest", "node_id", "node_url", "origin", "token_inspect", "uuid7", "tokens", "check_worker", "page_check", "notification", "tombstones", "values", "vocabulary")


def _plain_env() -> dict[str, str]:
    """The environment without coverage's subprocess hook: measuring coverage loads sqlite3
    into every child, which says nothing about the core."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


def loaded_after(imports: str) -> list[str]:
    """The modules of FORBIDDEN, or under them, that a fresh interpreter has loaded after ``imports``."""
    code = (f"import sys\n{imports}\nimport json\n"
            f"print(json.dumps(sorted(m for m in sys.modules\n"
            f"                        if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r}))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120,
                          env=_plain_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return list(json.loads(proc.stdout))


def test_encoding_tokens_declaration_and_facts_load_nothing_impure() -> None:
    """The acceptance check of the pure core, verbatim."""
    code = ("import sys\n"
            "import stigmem_node.encoding, stigmem_node.tokens, stigmem_node.declaration, stigmem_node.facts\n"
            f"print([m for m in {FORBIDDEN!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120,
                          env=_plain_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("module", CORE)
def test_each_core_module_loads_nothing_impure(module: str) -> None:
    assert loaded_after(f"import stigmem_node.{module}") == []


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_only_the_core(module: str) -> None:
    """Statically, including imports inside functions: a core module names only core modules."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stigmem_node":
                named.update(f"stigmem_node.{alias.name}" for alias in node.names)
            else:
                named.add(node.module)
    ours = {n for n in named if n.split(".")[0] == "stigmem_node"}
    assert ours <= {f"stigmem_node.{m}" for m in CORE}, sorted(ours)
    assert not {n for n in named if n.split(".")[0] in ("sqlite3", "httpx", "starlette", "uvicorn")}, sorted(named)



def test_the_probe_sees_impure_imports() -> None:
    """The storage-backed identity is not core: the probe must see what it loads."""
    loaded = loaded_after("import stigmem_node.identity")
    assert "stigmem_node.store" in loaded
    assert "sqlite3" in loaded_after("import stigmem_node.store.sqlite")


def test_a_check_worker_loads_no_private_key_machinery() -> None:
    """A check worker (``python -m stigmem_node.check_worker``) verifies with libsodium only: it
    loads neither the ``cryptography`` package (8 MiB in each worker) nor the node's key code."""
    code = ("import sys\nimport stigmem_node.check_worker\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography' or m == 'stigmem_node.keys'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120,
                          env=_plain_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
