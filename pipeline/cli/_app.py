"""The Typer app and the small output helpers every command shares.

Kept free of heavy imports: command modules import torch/faiss/transformers inside the
command functions, so `pipeline --help` stays fast.

Stdout carries a command's result and nothing else (one JSON document with ``--json``): while a
command runs, ``sys.stdout`` is stderr, so whatever a library prints (trainer log lines, a
third-party ``print``) lands next to the progress bars; only :func:`emit_json`,
:func:`print_table` and :func:`echo` write to the real stdout.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import IO, Any

import typer
from typer.core import TyperCommand

#: Where results go while a command runs (the stdout it was started with); unset outside one.
_RESULTS: ContextVar[IO[str]] = ContextVar("results")


def results() -> IO[str]:
    """The stream for a command's result: the real stdout, even while sys.stdout is stderr."""
    return _RESULTS.get(sys.stdout)


@contextlib.contextmanager
def stdout_for_results_only() -> Iterator[None]:
    """Run a command body with sys.stdout pointed at stderr; results still reach stdout."""
    token = _RESULTS.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULTS.reset(token)


class ResultCommand(TyperCommand):
    """A command whose body runs under :func:`stdout_for_results_only` (parsing and --help do not,
    so help text still goes to stdout)."""

    def invoke(self, ctx: Any) -> Any:
        with stdout_for_results_only():
            return super().invoke(ctx)


class App(typer.Typer):
    """A Typer app whose commands are :class:`ResultCommand` unless one asks for another class,
    so every command, present and future, keeps stdout for its result."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[Any], Any]:
        return super().command(name, cls=cls or ResultCommand, **kwargs)


app = App(
    name="pipeline",
    help="shoprank: two-stage product search (bi-encoder recall + multi-task cross-encoder rerank).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def emit_json(payload: Any) -> None:
    """Machine output: one JSON document on stdout."""
    results().write(json.dumps(payload, indent=2, default=str) + "\n")


def echo(text: str) -> None:
    """Human output that is not a table (a line of result text) on stdout."""
    results().write(text + "\n")


def print_table(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                columns: Sequence[str] | None = None, floatfmt: str = "{:.4f}") -> None:
    """Human output: a rich table over dict rows (floats formatted uniformly)."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for col in cols:
        table.add_column(str(col), overflow="fold")
    for row in rows:
        table.add_row(*[
            floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))
            for v in (row.get(c) for c in cols)
        ])
    # A terminal's own width; piped or redirected output gets room for the wide score tables
    # (rich would otherwise assume 80 columns), unless COLUMNS says otherwise.
    console = Console(file=results())
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=results(), width=120)
    console.print(table)


def info(message: str) -> None:
    """Progress / status text goes to stderr so stdout stays clean for --json."""
    sys.stderr.write(message + "\n")


def text_fields_option(default_help: str) -> Any:
    """The ``--text-fields`` option (one spelling and parse for every command that has it)."""
    return typer.Option(None, "--text-fields", help="Comma-separated catalog columns of the product text, e.g. "
                        f"title,brand,description ({default_help}). pipeline.toml: text_fields.")


def mapping_option() -> Any:
    """The ``--mapping`` option (one spelling and help for every command that reads a dataset)."""
    return typer.Option(None, "--mapping", help="Schema-mapping TOML (column renames, attribute joins, label maps "
                        "and scales, ids from text; docs/own-data.md).")


def parse_fields(spec: str | None) -> tuple[str, ...] | None:
    """``--text-fields`` as a tuple; None when not given (the command's default applies)."""
    from pipeline.core.text import parse_text_fields

    return None if spec is None else parse_text_fields(spec)
