"""The Typer app and the small output helpers every command shares.

Kept free of heavy imports: command modules import torch/faiss/transformers inside the
command functions, so `pipeline --help` stays fast.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import typer

app = typer.Typer(
    name="pipeline",
    help="shoprank: two-stage product search (bi-encoder recall + multi-task cross-encoder rerank).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def emit_json(payload: Any) -> None:
    """Machine output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


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
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    console.print(table)


def info(message: str) -> None:
    """Progress / status text goes to stderr so stdout stays clean for --json."""
    sys.stderr.write(message + "\n")


def stdout_to_stderr() -> Any:
    """Context in which library prints go to stderr: the Hugging Face Trainer prints its log
    lines to stdout, which must hold nothing but the command's result (--json)."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


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
