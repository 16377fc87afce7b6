"""Settings: defaults < ``pipeline.toml`` in the working directory < command-line flags.

``pipeline.toml`` has one table per command, keyed by the option's Python name, e.g.::

    [build-index]
    index_type = "hnsw"

    [search]
    k = 20
    candidates = 50

    [index]          # nested command groups nest tables
    [index.add]
    ...

It is fed to Click's ``default_map``, so flags always win and `pipeline config show`
can print the effective settings. Default artefact paths live here too.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pipeline.core.errors import ShoprankError

CONFIG_FILE = "pipeline.toml"

# Default locations, relative to the working directory (the demo writes them there).
DEFAULT_DATA_DIR = Path("data/sample")
DEFAULT_RETRIEVER_DIR = Path("models/retriever")
DEFAULT_RERANKER_DIR = Path("models/reranker")
DEFAULT_DOMAIN_BERT_DIR = Path("models/domain-bert")
DEFAULT_INDEX_DIR = Path("indexes/default")
#: File name of a per-position impression log next to the other data files.
POSITIONS_FILE = "positions.parquet"
from pipeline.core.runtime import DEFAULT_SEED  # noqa: E402  (re-exported for the CLI)
#: Inference backends for both encoders: "auto" = ONNX Runtime when exports exist, else torch.
BACKENDS = ("auto", "onnx", "torch")
#: Reranker precision for search and batch scoring. "auto" = int8 on ONNX Runtime (nDCG@10
#: -0.0046 against fp32, about 2x faster: benchmarks/int8_quality.py, search_speed.py) and
#: fp32 on torch (torch's dynamic int8 costs -0.017 nDCG@10, so it is never a default).
PRECISION_CHOICES = ("auto", "fp32", "int8")
DEFAULT_PRECISION = "auto"


def config_path() -> Path:
    """The config file that applies here (``$SHOPRANK_CONFIG`` overrides the cwd file)."""
    return Path(os.environ.get("SHOPRANK_CONFIG", CONFIG_FILE))


def load_config(path: Path | None = None) -> dict[str, Any]:
    """Parse the TOML config; a missing file means no overrides, a broken one is an error."""
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ShoprankError(f"{path}: invalid TOML ({exc})") from None
    return data


def default_map(path: Path | None = None) -> dict[str, Any]:
    """Click ``default_map`` built from the config file (command name -> option defaults)."""
    return {key.replace("_", "-"): value for key, value in load_config(path).items()}


def _walk_commands(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf command of a Click group with its path (("index", "add"), ...)."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [(prefix, command)]
    out: list[tuple[tuple[str, ...], Any]] = []
    for name in sorted(subcommands):
        out += _walk_commands(subcommands[name], (*prefix, name))
    return out


def _lookup(table: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The pipeline.toml table for a command path (accepting '-' or '_' in names)."""
    node: Any = table
    for part in path:
        if not isinstance(node, dict):
            return {}
        node = node.get(part, node.get(part.replace("-", "_"), {}))
    return node if isinstance(node, dict) else {}


def check_config(cli: Any, config: dict[str, Any], path: Path | None = None) -> None:
    """Refuse a pipeline.toml table or key that matches no command or option, naming the
    closest valid one.

    Why refuse rather than warn: Click's ``default_map`` silently ignores unknown names, so
    a typo such as ``[serach]`` would leave every setting in it without effect.
    """
    import difflib

    where = path or config_path()

    def visit(node: dict[str, Any], command: Any, trail: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None) or {}
        options = {p.name for p in getattr(command, "params", []) if p.name != "help"}
        for key, value in node.items():
            name = key.replace("_", "-") if isinstance(value, dict) else key
            here = ".".join((*trail, name))
            if isinstance(value, dict) and (name in subcommands or key in subcommands):
                visit(value, subcommands.get(name) or subcommands[key], (*trail, name))
                continue
            if not isinstance(value, dict) and key in options:
                continue
            if isinstance(value, dict):
                close = difflib.get_close_matches(name, sorted(subcommands), n=1, cutoff=0.5)
                hint = f"; did you mean [{'.'.join((*trail, close[0]))}]?" if close else ""
                raise ShoprankError(f"{where}: unknown table [{here}] (no such command){hint}")
            close = difflib.get_close_matches(key, sorted(options), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            table = f"[{'.'.join(trail)}]" if trail else "the top level"
            raise ShoprankError(f"{where}: unknown key {key!r} in {table} (no such option){hint}")

    visit(config, cli, ())


def effective_settings(cli: Any, config: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Per-command effective option values (built-in default, or pipeline.toml override).

    Returns ``({"search": {"k": {"value": 20, "source": "pipeline.toml"}, ...}, ...}, unknown)``
    where ``unknown`` lists config keys that match no command option — almost always a
    typo that would otherwise be silently ignored by Click's default_map.
    """
    config = load_config() if config is None else config
    settings: dict[str, Any] = {}
    known_paths: set[tuple[str, ...]] = set()
    for path, command in _walk_commands(cli):
        table = _lookup(config, path)
        options: dict[str, Any] = {}
        for param in command.params:
            if param.name in ("help",) or getattr(param, "hidden", False):
                continue
            known_paths.add((*path, param.name))
            if param.name in table:
                options[param.name] = {"value": table[param.name], "source": CONFIG_FILE}
            else:
                default = param.default
                options[param.name] = {"value": None if default is None else
                                       (str(default) if isinstance(default, Path) else default),
                                       "source": "default"}
        settings[" ".join(path)] = options
    unknown: list[str] = []

    def visit(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*path, key.replace("_", "-") if isinstance(value, dict) else key)
            if isinstance(value, dict):
                visit(value, here)
            elif here not in known_paths:
                unknown.append(".".join(here))

    visit(config, ())
    return settings, unknown
