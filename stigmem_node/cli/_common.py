"""What every command shares: the global options, settings and the node, output, and
the mapping of errors to one line on stderr and an exit code."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stigmem_node.config import Settings, from_env
from stigmem_node.errors import ConfigError, StigmemError
from stigmem_node.federation import Actor

if TYPE_CHECKING:
    from stigmem_node.node import Node

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
PROG = "stigmem-node"

T = TypeVar("T")


@dataclass(frozen=True)
class Globals:
    """``--db`` and ``--json``: every command takes them, before or after its name (where
    both are given, the one nearer the command wins)."""

    db: str | None = None
    json: bool = False
    database_url: str | None = None


# -- settings and the node ---------------------------------------------------------------
def settings_for(g: Globals, **overrides: Any) -> Settings:
    """The environment's settings, overridden by ``--db`` and the command's flags (None: not given)."""
    return from_env().with_overrides(db_path=Path(g.db) if g.db else None, database_url=g.database_url,
                                     **overrides)


def open_node(g: Globals, *, serving: bool = False, create: bool = False, **overrides: Any) -> Node:
    """The node of ``--db``.  Only ``serve`` and ``init`` create a database (and identity and
    pepper); every other command refuses to run against a path where there is none (a typo
    must not make a new node) or a file that is not a stigmem database, and changes nothing."""
    from stigmem_node.node import Node

    settings = settings_for(g, **overrides)
    if not (serving or create) and settings.database_url is None and not settings.db_path.exists():
        raise ConfigError("database_missing", f"no node database at {settings.db_path}; pass --db or set "
                          "STIGMEM_DB_PATH, or create one with 'stigmem-node init'")
    return Node(settings, serving=serving, create=serving or create)


def cli_actor() -> Actor:
    """Who runs the command, as the audit trail records it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "local")


# -- output ------------------------------------------------------------------------------
def emit(g: Globals, data: T, human: Callable[[T], str]) -> None:
    """``data`` as indented JSON with ``--json``, else as ``human`` writes it."""
    if g.json:
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(human(data))


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(r: list[str]) -> str:
        return "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


# -- errors ------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    """Line breaks and other unprintable characters (which a hostile argument may carry
    into a message) as spaces: an error is always one line."""
    return "".join(c if c.isprintable() else " " for c in text)


def _fail(as_json: bool, code: str, line: str, message: str) -> None:
    """An error on stderr: ``line`` for people, or ``{"error": code, "message": message}``."""
    if as_json:
        print(json.dumps({"error": code, "message": _one_line(message)}, ensure_ascii=False), file=sys.stderr,
              flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def run(invoke: Callable[[], int], as_json: bool = False) -> int:
    """Run a command line and turn every error into one line on stderr (with ``as_json``, one
    JSON object ``{"error": code, "message": ...}``) and an exit code: 2 for bad usage or
    configuration, 1 for a refusal, 130 when interrupted, 70 for a bug (``STIGMEM_DEBUG=1``
    lets its traceback through instead)."""
    try:
        return invoke()
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else PROG
        message = _one_line(exc.format_message())
        _fail(as_json, "usage_error", f"{path}: {message} (see {path} --help)", message)
        return EXIT_USAGE
    except click.ClickException as exc:
        message = _one_line(exc.format_message())
        _fail(as_json, "usage_error", f"{PROG}: {message}", message)
        return int(exc.exit_code)
    except click.Abort:
        return EXIT_FAIL
    except ConfigError as exc:
        _fail(as_json, exc.code, f"{PROG}: {exc.message}", exc.message)
        return EXIT_USAGE
    except StigmemError as exc:
        _fail(as_json, exc.code, f"{PROG}: {exc.message} ({exc.code})", exc.message)
        return EXIT_FAIL
    except KeyboardInterrupt:
        _fail(as_json, "interrupted", f"{PROG}: interrupted", "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # A bug, not an expected error: one line and a distinct exit code instead of a
        # traceback; STIGMEM_DEBUG=1 shows the traceback for a report.
        if os.environ.get("STIGMEM_DEBUG"):
            raise
        _fail(as_json, "internal_error", f"{PROG}: internal error ({type(exc).__name__}); please report it "
              "(STIGMEM_DEBUG=1 shows the details)",
              f"internal error ({type(exc).__name__}); please report it (STIGMEM_DEBUG=1 shows the details)")
        return EXIT_INTERNAL
