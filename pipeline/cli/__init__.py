"""`pipeline` command-line entry point: a thin Typer layer over the library API.

Each ``*_cmd`` module registers its commands on the shared app. Expected failures
(:class:`pipeline.core.errors.ShoprankError`, unreadable files) become one line on stderr and a
non-zero exit, never a traceback.
"""
from __future__ import annotations

import sys

from pipeline.cli._app import app
from pipeline.core.errors import ShoprankError

# Command modules: importing them registers their commands. Keep them import-light.
from pipeline.cli import config_cmd, data_cmd, rerank_cmd, retrieval_cmd, search_cmd  # noqa: E402,F401

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app, mapping expected errors to one-line messages."""
    from pipeline.config import config_path, default_map

    try:
        defaults: dict = {}
        if config_path().is_file():
            import typer.main

            defaults = default_map(typer.main.get_command(app))
    except ShoprankError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    try:
        # standalone mode: Click itself reports usage errors (one line + usage) and exits.
        app(args=argv, default_map=defaults)
    except ShoprankError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        sys.stderr.write(f"error: {exc.filename or ''}: {exc.strerror}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
