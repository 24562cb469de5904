"""The command line's click classes: the root group, command registration, bounded
numbers, documented arguments, and arguments read as the command line always read them.

Reading arguments: a unique prefix of a long option names it (``--js`` is ``--json``);
a token that looks like a negative number (``-1.5``) or holds a space is a value, not an
option (``facts add e r -1.5 --type number``); an option that takes a value refuses
another option as its value (``--label --json`` is a usage error, ``--label=--json`` is
not).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stigmem_node import __version__
from stigmem_node.cli._common import PROG, Globals, run

F = TypeVar("F", bound=Callable[..., int])

DB_HELP = "SQLite database file (env STIGMEM_DB_PATH, default ./stigmem.db)"
DATABASE_URL_HELP = ("PostgreSQL database instead of the SQLite file, postgresql://USER@HOST:PORT/DB "
                     "(env STIGMEM_DATABASE_URL)")
JSON_HELP = "machine-readable output"
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


# -- reading arguments -------------------------------------------------------------------
def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and " " not in token and not _NEGATIVE_NUMBER.match(token)


def _options_of(command: click.Command, ctx: click.Context) -> tuple[dict[str, bool], dict[str, bool]]:
    """The command's long and short option names, each with whether it takes a value."""
    longs: dict[str, bool] = {}
    shorts: dict[str, bool] = {}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            takes_value = not (param.is_flag or param.count)
            for name in (*param.opts, *param.secondary_opts):
                (longs if name.startswith("--") else shorts)[name] = takes_value
    return longs, shorts


def normalize(command: click.Command, ctx: click.Context, args: list[str], *, group: bool) -> list[str]:
    """``args`` rewritten so that click reads them as described in the module docstring.

    Options keep their order; a command's positional arguments follow them after ``--``.
    A group's own options end at its first positional argument (the subcommand), whose
    arguments are left to the subcommand."""
    longs, shorts = _options_of(command, ctx)
    options: list[str] = []
    positionals: list[str] = []
    rest = list(args)

    def take_value(name: str) -> None:
        if rest:
            if _is_option(rest[0]):
                raise click.BadOptionUsage(name, f"Option '{name}' requires an argument.", ctx=ctx)
            options.append(rest.pop(0))

    while rest:
        arg = rest.pop(0)
        if arg == "--" or not _is_option(arg):
            if group:
                return [*options, arg, *rest]
            positionals.extend(rest if arg == "--" else [arg])
            if arg == "--":
                break
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in longs:
                matches = [o for o in longs if o.startswith(name)]
                if len(matches) > 1:
                    raise click.UsageError(f"ambiguous option: {name} could match {', '.join(matches)}", ctx)
                if matches:
                    name = matches[0]
            options.append(name + eq + value)
            if longs.get(name) and not eq:
                take_value(name)
            continue
        options.append(arg)
        for i in range(1, len(arg)):  # a cluster of short options: -fn 5, -n5
            name = "-" + arg[i]
            if name not in shorts:
                break
            if shorts[name]:
                if i == len(arg) - 1:
                    take_value(name)
                break
    return [*options, "--", *positionals] if positionals else options


class Arg(click.Argument):
    """A positional argument with a help text."""

    def __init__(self, param_decls: Sequence[str], *, help: str | None = None, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help


class Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize(self, ctx, args, group=False))

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(p.human_readable_name, p.help) for p in self.get_params(ctx) if isinstance(p, Arg) and p.help]
        if rows:
            with formatter.section("Arguments"):
                formatter.write_dl(rows)


class Group(click.Group):
    def __init__(self, name: str, **attrs: Any) -> None:
        attrs.setdefault("no_args_is_help", False)  # no subcommand: a one-line usage error
        super().__init__(name, **attrs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize(self, ctx, args, group=True))


class CommandLine(Group):
    """The root group, run as ``stigmem-node``: ``main`` maps every error to one line and
    an exit code (``_common.run``) and returns the code, or exits with it in standalone mode."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> int:
        argv = list(sys.argv[1:] if args is None else args)
        name = prog_name or PROG
        var = complete_var or f"_{name.replace('-', '_').upper()}_COMPLETE"
        instruction = os.environ.get(var)
        if instruction:  # the shell asks for completions (click's own; docs/operating.md)
            from click.shell_completion import shell_complete

            return shell_complete(self, extra, name, var, instruction)

        def invoke() -> int:
            with self.make_context(prog_name or PROG, argv, **extra) as ctx:
                return int(self.invoke(ctx) or 0)

        code = run(invoke, as_json=wants_json(argv))
        if standalone_mode:
            sys.exit(code)
        return code


def wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` (or a unique prefix of it, ``--js``) is among the options of
    ``argv``, read before parsing so that even a usage error comes out as JSON."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) >= 4 and "--json".startswith(arg):
            return True
    return False


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        print(f"{PROG} {__version__}")
        ctx.exit()


def _global_options() -> list[click.Parameter]:
    return [click.Option(["--db"], metavar="FILE", help=DB_HELP),
            click.Option(["--database-url"], metavar="URL", help=DATABASE_URL_HELP),
            click.Option(["--json"], is_flag=True, help=JSON_HELP)]


root = CommandLine(
    PROG, help="A federated knowledge-node peer server.",
    params=[*_global_options(),
            click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                         help="Show the version and exit.")],
    context_settings={"help_option_names": ["-h", "--help"]},
)


def group(name: str, *, help: str) -> Group:
    """A group of commands under the root (``peers``, ``audit``, ...)."""
    sub = Group(name, help=help, short_help=help, params=_global_options())
    root.add_command(sub)
    return sub


# -- commands ----------------------------------------------------------------------------
def _globals(ctx: click.Context | None) -> Globals:
    """``--db`` and ``--json`` wherever they were given: on the command, its group or the
    root (the one nearest the command wins)."""
    db: str | None = None
    url: str | None = None
    as_json = False
    while ctx is not None:
        db = db or ctx.params.get("db")
        url = url or ctx.params.get("database_url")
        as_json = as_json or bool(ctx.params.get("json"))
        ctx = ctx.parent
    return Globals(db=db, json=as_json, database_url=url)


def command(parent: click.Group, name: str, *, help: str, global_options: bool = True) -> Callable[[F], F]:
    """Register the function below as the command ``name`` of ``parent``, with the
    options and arguments declared on it by ``click.option``/``click.argument`` and,
    unless ``global_options`` is false, ``--db`` and ``--json``.

    The function stays a plain function ``cmd(g: Globals, **options) -> exit code``.  The
    command line calls it through the ``stigmem_node.cli`` package, which exports every
    command function, so that the package is the one table of them (and replacing one
    there, as a test does, replaces it for the command line too)."""

    def register(func: F) -> F:
        params: list[click.Parameter] = list(reversed(func.__dict__.pop("__click_params__", [])))
        if global_options:
            params += _global_options()

        def callback(**values: Any) -> int:
            g = _globals(click.get_current_context())
            if not global_options and (g.db or g.json or g.database_url):
                raise click.UsageError(f"{name} takes neither --db, --database-url nor --json")
            values.pop("db", None)
            values.pop("database_url", None)
            values.pop("json", None)
            handler = getattr(sys.modules[__package__], func.__name__, func)
            return int(handler(g, **values) or 0)

        parent.add_command(Command(name, params=params, callback=callback, help=help, short_help=help))
        return func

    return register


# -- numbers -----------------------------------------------------------------------------
if TYPE_CHECKING:  # click's ParamType is generic from 8.2 on, for type checkers only
    IntParamType = click.ParamType[int]
    FloatParamType = click.ParamType[float]
else:
    IntParamType = FloatParamType = click.ParamType


class BoundedInt(IntParamType):
    """A whole number from ``lo`` to ``hi``."""

    name = "integer"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value)
        try:
            number = int(text)
        except ValueError:
            self.fail(f"not a whole number: {text[:40]!r}", param, ctx)
        if not self.lo <= number <= self.hi:
            self.fail(f"must be from {self.lo} to {self.hi:,}, got {text[:40]}", param, ctx)
        return number


class Seconds(FloatParamType):
    """A number of seconds, more than 0 and at most ``hi`` (NaN is refused)."""

    name = "seconds"

    def __init__(self, hi: float) -> None:
        self.hi = hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value)
        try:
            number = float(text)
        except ValueError:
            self.fail(f"not a number: {text!r}", param, ctx)
        if not 0 < number <= self.hi:
            self.fail(f"must be more than 0 and at most {self.hi:g}, got {text}", param, ctx)
        return number


LIMIT = BoundedInt(1, 100_000)
EXPIRES_IN_DAYS = BoundedInt(1, 36_500)
INTERVAL = Seconds(3600)
