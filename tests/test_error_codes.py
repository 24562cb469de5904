"""The registry of error codes (stigmem_node/error_codes.py) against docs/protocol.md, against
the source, and at the HTTP edge.

- Every code in the registry is documented in the table of docs/protocol.md's Error codes for
  each place it is used, with the same status (or exit status); every code documented there is
  in the registry.
- Every code the source can raise (a literal or module constant given to an error class or to a
  helper that makes one, a class's default ``code``, a peer-token rejection code) is in the
  registry, so no error reaches the HTTP edge with a status nobody decided.
- The HTTP edge answers each code with the registry's status, through the real app.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.routing import Route

from stigmem_node import error_codes, tokens
from stigmem_node.error_codes import REGISTRY, Use
from stigmem_node.errors import ConfigError, StigmemError, ValidationError
from stigmem_node.http.errors import retry_after_for, status_for
from tests.inproc import InProcessNode

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stigmem_node"
PROTOCOL = ROOT / "docs" / "protocol.md"
CODE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+|[a-z]+")

# docs/protocol.md, "## Error codes": each subsection is one table of one use.
SECTIONS = {
    "Request and authentication": Use.HTTP,
    "Peers": Use.HTTP,
    "Registration outcomes": Use.REGISTRATION,
    "Peer tokens": Use.HTTP,
    "Notifications": Use.HTTP,
    "Serving facts": Use.HTTP,
    "Replication (subscriber)": Use.REPLICATION,
    "Fact rejection reasons": Use.FACT_REJECTION,
    "Outbound fetches": Use.OUTBOUND,
    "Key refresh outcomes": Use.KEY_REFRESH,
    "Command line only": Use.CLI,
    "Internal": Use.INTERNAL,
}


# -- docs/protocol.md -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DocRow:
    section: str
    use: Use
    code: str
    status: str | None  # the Status column as written, if the table has one
    exit: str | None  # the Exit column, if the table has one


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section, up to the next ``## `` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _tables(block: str) -> list[list[list[str]]]:
    """The markdown tables of ``block``: rows of cells, the separator row dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in block.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def documented_rows() -> list[DocRow]:
    errors = _section(PROTOCOL.read_text(encoding="utf-8"), "Error codes")
    parts = re.split(r"^### (.+)$", errors, flags=re.M)
    rows: list[DocRow] = []
    seen = []
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        title = title.strip()
        assert title in SECTIONS, f"docs/protocol.md: a new Error codes section {title!r}: add it to SECTIONS"
        seen.append(title)
        tables = _tables(body)
        assert len(tables) == 1, f"section {title!r} must have exactly one table, it has {len(tables)}"
        header, *lines = tables[0]
        assert header[0] == "Code", (title, header)
        status_col = header.index("Status") if "Status" in header else None
        exit_col = header.index("Exit") if "Exit" in header else None
        for cells in lines:
            codes = re.findall(r"`([^`]+)`", cells[0])
            assert codes, (title, cells)
            for code in codes:
                assert CODE_RE.fullmatch(code), (title, code)
                rows.append(DocRow(title, SECTIONS[title], code,
                                   cells[status_col] if status_col is not None else None,
                                   cells[exit_col] if exit_col is not None else None))
    assert sorted(seen) == sorted(SECTIONS), f"Error codes sections missing from docs/protocol.md: " \
                                             f"{sorted(set(SECTIONS) - set(seen))}"
    return rows


DOC_ROWS = documented_rows()


def test_every_documented_code_is_in_the_registry_with_its_use_status_and_exit():
    problems = []
    for row in DOC_ROWS:
        entry = REGISTRY.get(row.code)
        if entry is None:
            problems.append(f"{row.code} ({row.section}): not in stigmem_node/error_codes.py")
            continue
        if row.use not in entry.uses:
            problems.append(f"{row.code}: documented under {row.section!r} but its uses are "
                            f"{sorted(u.value for u in entry.uses)}")
        if row.status is not None:
            if row.status.isdigit():
                if entry.status != int(row.status):
                    problems.append(f"{row.code}: documented status {row.status}, registry {entry.status}")
            elif row.status == "as sent":
                if entry.status is not None:
                    problems.append(f"{row.code}: documented 'as sent', registry {entry.status}")
            elif (m := re.fullmatch(r"CLI exit (\d)", row.status)):
                if entry.exit_status != int(m.group(1)):
                    problems.append(f"{row.code}: documented {row.status!r}, registry exit {entry.exit_status}")
            elif row.status != "replication":
                problems.append(f"{row.code}: cannot read the status {row.status!r}")
        if row.exit is not None and entry.exit_status != int(row.exit):
            problems.append(f"{row.code}: documented exit {row.exit}, registry {entry.exit_status}")
    assert not problems, "\n".join(problems)


def test_every_registry_code_is_documented_for_each_of_its_uses():
    documented = {(row.code, row.use) for row in DOC_ROWS}
    missing = [f"{entry.code} under a {use.value} table" for entry in REGISTRY.values() for use in entry.uses
               if (entry.code, use) not in documented]
    assert not missing, "codes in the registry that docs/protocol.md does not list:\n" + "\n".join(missing)


def test_the_registry_is_consistent():
    for entry in REGISTRY.values():
        assert CODE_RE.fullmatch(entry.code), entry
        assert entry.meaning and "\n" not in entry.meaning and len(entry.meaning) <= 110, entry
        assert entry.uses, entry
        # An HTTP status exactly for HTTP codes (http_error's is the framework's own).
        if entry.code != "http_error":
            assert (entry.status is not None) == (Use.HTTP in entry.uses), entry
        assert entry.status is None or 400 <= entry.status <= 599, entry
        assert entry.exit_status in (None, 0, 1, 2, 130), entry  # 130: interrupted (Ctrl-C)
        if entry.retry_after is not None:
            assert entry.status in (429, 503), entry
    assert error_codes.lookup("peer_http_503") is REGISTRY["peer_http_5xx"]
    assert error_codes.lookup("peer_http_600") is None
    assert error_codes.lookup("no_such_code") is None


def test_the_verification_order_table_agrees_with_the_registry():
    """docs/protocol.md's Verification order gives each peer-token check's code and status."""
    (table,) = _tables(_section(PROTOCOL.read_text(encoding="utf-8"), "Peer tokens").split(
        "### Verification order", 1)[1].split("\n### ", 1)[0])
    header, *lines = table
    code_col, status_col = header.index("Code"), header.index("Status")
    codes = set()
    for cells in lines:
        code = re.findall(r"`([^`]+)`", cells[code_col])[0]
        codes.add(code)
        assert REGISTRY[code].status == int(cells[status_col].strip("*")), (code, cells[status_col])
    assert set(tokens.REJECTION_CODES) | {"nonce_already_seen", "too_many_failed_attempts"} == codes


# -- the source -------------------------------------------------------------------------------------
@dataclass
class _Module:
    path: Path
    tree: ast.Module
    constants: dict[str, str]  # module-level NAME = "text"


def _modules() -> list[_Module]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        constants = {}
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                constants[node.targets[0].id] = node.value.value
            elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)  # NAME: Final = "…"
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                constants[node.target.id] = node.value.value
        out.append(_Module(path, tree, constants))
    return out


def _base_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return None


CODE_PARAMS = ("code", "reason")


def _code_param(fn: ast.FunctionDef) -> tuple[int | None, str] | None:
    """(position, name) of the parameter carrying the code, for a constructor or helper."""
    params = [*fn.args.posonlyargs, *fn.args.args]
    if params and params[0].arg in ("self", "cls"):
        params = params[1:]
    for i, p in enumerate(params):
        if p.arg in CODE_PARAMS:
            return i, p.arg
    for p in fn.args.kwonlyargs:
        if p.arg in CODE_PARAMS:
            return None, p.arg
    return None


def _parameter_defaults(fn: ast.FunctionDef) -> Iterator[tuple[str, ast.expr]]:
    positional = [*fn.args.posonlyargs, *fn.args.args]
    for p, d in zip(positional[len(positional) - len(fn.args.defaults):], fn.args.defaults, strict=True):
        yield p.arg, d
    for p, kd in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True):
        if kd is not None:
            yield p.arg, kd


@dataclass(frozen=True)
class Found:
    code: str  # a code, or a prefix ending in "*" for an f-string
    where: str


def _resolve(expr: ast.expr, where: str, module: _Module, all_constants: dict[str, set[str]]) -> Found | None:
    """The code an expression names: a literal, a module constant, or an f-string's prefix."""
    if isinstance(expr, ast.Constant):
        return Found(expr.value, where) if isinstance(expr.value, str) else None
    if isinstance(expr, ast.JoinedStr):
        head = expr.values[0] if expr.values else None
        prefix = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
        return Found(prefix + "*", where)
    name = expr.id if isinstance(expr, ast.Name) else expr.attr if isinstance(expr, ast.Attribute) else None
    if name is None:
        return None
    if name in module.constants:
        return Found(module.constants[name], where)
    if isinstance(expr, ast.Attribute) or name.isupper():
        values = all_constants.get(name, set())
        if len(values) == 1:
            return Found(next(iter(values)), where)
    return None  # a code computed at run time (exc.code, a parameter): checked where it came from


def raised_codes() -> list[Found]:
    """Every code the package's source gives to an error: see the module docstring."""
    modules = _modules()
    all_constants: dict[str, set[str]] = {}
    for m in modules:
        for name, value in m.constants.items():
            all_constants.setdefault(name, set()).add(value)

    # Error classes: StigmemError and its subclasses (by name, transitively), and any exception
    # class taking a code or reason (e.g. a declaration's rejection).
    classes: dict[str, ast.ClassDef] = {}
    for m in modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node
    error_classes = {"StigmemError"}
    changed = True
    while changed:
        changed = False
        for name, cls in classes.items():
            if name not in error_classes and any(_base_name(b) in error_classes for b in cls.bases):
                error_classes.add(name)
                changed = True

    def init_of(name: str) -> ast.FunctionDef | None:
        cls = classes.get(name)
        seen: set[str] = set()
        while cls is not None and cls.name not in seen:  # class Command(click.Command) names itself
            seen.add(cls.name)
            for item in cls.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return item
            bases = [_base_name(b) for b in cls.bases]
            cls = next((classes[b] for b in bases if b in classes and b != cls.name), None)
        return None

    constructors: dict[str, tuple[int | None, str]] = {}
    for name in classes:
        init = init_of(name)
        param = _code_param(init) if init is not None else None
        if param is not None and (name in error_classes or param[1] == "reason"):
            constructors[name] = param
            error_classes.add(name)
    # Helpers that make an error: functions returning an error class and taking a code.
    defaults: list[Found] = []
    for m in modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.FunctionDef) and node.returns is not None \
                    and _base_name(node.returns) in error_classes:
                param = _code_param(node)
                if param is not None:
                    constructors.setdefault(node.name, param)
                    for arg, default in _parameter_defaults(node):
                        if arg == param[1] and isinstance(default, ast.Constant) and isinstance(default.value, str):
                            defaults.append(Found(default.value, f"{m.path.name}: default of {node.name}"))

    found = list(defaults)
    for m in modules:
        rel = m.path.relative_to(ROOT)

        def resolve(expr: ast.expr, line: int, m: _Module = m, rel: Path = rel) -> Found | None:
            return _resolve(expr, f"{rel}:{line}", m, all_constants)

        for node in ast.walk(m.tree):
            if isinstance(node, ast.ClassDef) and node.name in error_classes:
                for item in node.body:
                    if (isinstance(item, (ast.Assign, ast.AnnAssign)) and item.value is not None
                            and any(isinstance(t, ast.Name) and t.id == "code"
                                    for t in (item.targets if isinstance(item, ast.Assign) else [item.target]))):
                        hit = resolve(item.value, item.lineno)
                        if hit is not None:
                            found.append(hit)
            called = _base_name(node.func) if isinstance(node, ast.Call) else None
            if isinstance(node, ast.Call) and called in constructors:
                position, keyword = constructors[called]
                code_arg = next((k.value for k in node.keywords if k.arg == keyword), None)
                if code_arg is None and position is not None and len(node.args) > position \
                        and not any(isinstance(a, ast.Starred) for a in node.args[:position + 1]):
                    code_arg = node.args[position]
                if code_arg is not None:
                    hit = resolve(code_arg, node.lineno)
                    if hit is not None:
                        found.append(hit)
    return found


def _registered(code: str) -> bool:
    if code.endswith("*"):
        return any(c.startswith(code[:-1]) for c in REGISTRY)
    return error_codes.lookup(code) is not None


def test_every_code_the_source_raises_is_in_the_registry():
    found = raised_codes()
    # The scan finds the codes it must (a sanity check of the scan itself).
    codes = {f.code for f in found}
    for expected in ("invalid_json", "database_busy", "invalid_config", "peer_already_registered",
                     "malformed_token", "invalid_fact", "value_too_large", "peer_http_*", "fetch_timeout",
                     "insecure_file_mode", "invalid_node_url", "malformed_declaration"):
        assert expected in codes, f"the source scan no longer sees {expected!r}: fix the scan"
    missing = sorted({f"{f.code} ({f.where})" for f in found if not _registered(f.code)})
    assert not missing, "codes raised in the source but missing from stigmem_node/error_codes.py " \
                        "(add them there and to docs/protocol.md):\n" + "\n".join(missing)


def test_every_peer_token_rejection_code_is_an_http_code():
    for code in tokens.REJECTION_CODES:
        assert REGISTRY[code].status in (401, 403), code


def test_error_categories_need_a_code():
    from stigmem_node.errors import Conflict, Forbidden, Unauthorized

    for cls in (StigmemError, Conflict, Forbidden, Unauthorized):
        with pytest.raises(TypeError):
            cls(message="no code")
    assert ConfigError().code == "invalid_config"


# -- the HTTP edge --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(REGISTRY))
def test_status_for_is_the_registry_status(code):
    entry = REGISTRY[code]
    assert status_for(StigmemError(code, "m")) == (entry.status if entry.status is not None else 500)
    assert retry_after_for(StigmemError(code, "m")) == entry.retry_after


def test_an_unregistered_code_is_500_and_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="stigmem_node.http"):
        assert status_for(ValidationError("no_such_code_anywhere", "m")) == 500
    assert "no_such_code_anywhere" in caplog.text


def test_an_errors_own_retry_after_wins_over_its_codes():
    assert retry_after_for(StigmemError("database_busy", "m", retry_after=5)) == 5
    assert retry_after_for(StigmemError("too_many_failed_attempts", "m")) is None


HTTP_CODES = sorted(c for c, e in REGISTRY.items() if e.status is not None)


@pytest.fixture(scope="module")
def raising_node(tmp_path_factory) -> Iterator[InProcessNode]:
    """The real app, with one extra route that raises the error named in its path (nothing
    else is requested, so the node's state does not change between tests)."""
    node = InProcessNode(tmp_path_factory.mktemp("codes") / "node.db")

    async def raise_code(request: Request) -> Any:
        code = request.path_params["code"]
        kind = request.query_params.get("kind")
        if kind == "retry":
            raise StigmemError(code, "wait", retry_after=7)
        if kind == "field":
            raise ValidationError(code, "bad field", field="f")
        raise StigmemError(code, f"raised {code}")

    node.app.router.routes.append(Route("/test-raise/{code}", raise_code, methods=["GET"]))
    try:
        yield node
    finally:
        node.close()


@pytest.mark.parametrize("code", HTTP_CODES)
def test_each_http_code_raised_through_the_app_gets_the_registry_status(raising_node, code):
    entry = REGISTRY[code]
    res = raising_node.request("GET", f"/test-raise/{code}")
    assert res.status_code == entry.status, (code, res.status_code, res.text)
    assert res.json() == {"error": code, "detail": code, "message": f"raised {code}"}
    assert res.headers.get("retry-after") == (str(entry.retry_after) if entry.retry_after else None)
    assert res.headers.get("x-request-id")


def test_an_errors_own_retry_after_is_in_the_header_and_the_body(raising_node):
    res = raising_node.request("GET", "/test-raise/too_many_failed_attempts?kind=retry")
    assert res.status_code == 429 and res.headers["retry-after"] == "7"
    assert res.json() == {"error": "too_many_failed_attempts", "detail": "too_many_failed_attempts",
                          "message": "wait", "retry_after": 7}


def test_a_validation_error_names_its_field(raising_node):
    res = raising_node.request("GET", "/test-raise/invalid_request?kind=field")
    assert res.status_code == 422 and res.json()["field"] == "f"


@pytest.mark.parametrize("code", ["no_such_code_anywhere", "database_missing", "cursor_stuck"])
def test_a_code_that_is_no_http_code_is_500_with_its_own_body(raising_node, code):
    res = raising_node.request("GET", f"/test-raise/{code}")
    assert res.status_code == 500
    assert res.json() == {"error": code, "detail": code, "message": f"raised {code}"}
