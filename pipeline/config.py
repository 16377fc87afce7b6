"""Settings: defaults < ``pipeline.toml`` in the working directory < command-line flags.

``pipeline.toml`` has one table per command, keyed by the option's flag name (the Python
parameter name is accepted too), e.g.::

    [build-index]
    index-type = "hnsw"

    [search]
    k = 20
    candidates = 50

    [index]          # nested command groups nest tables
    [index.add]
    ...

A few settings apply to every command that has the option and may sit at the top level
(:data:`SHARED_KEYS`), e.g. ``text_fields = ["title", "description"]``: a command's own table
still wins.

It is turned into Click's ``default_map``, so flags always win and `pipeline config show`
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
DEFAULT_RUNS_DIR = Path("runs")
#: Retrieved candidates the reranker scores per query, the default of every command: past
#: this, more candidates cost reranking time without a measurable ranking gain
#: (benchmarks/search_speed.py).
DEFAULT_CANDIDATES = 50
#: First stage of every command (dense | lexical | hybrid): dense, because hybrid did not
#: win on the sample world's valid split (README, "Hybrid recall"); an index records its own
#: fitted fusion, so another shop can measure and choose differently.
DEFAULT_RETRIEVAL = "dense"
#: Systems `pipeline evaluate` knows, in table order (described in :mod:`pipeline.evaluate`);
#: here so the CLI's --help needs no evaluation import.
EVAL_SYSTEMS = ("bm25", "dense-zero-shot", "dense-fine-tuned", "two-stage", "oracle-rerank", "lexical", "hybrid",
                "two-stage-hybrid")
#: File name of a per-position impression log next to the other data files.
POSITIONS_FILE = "positions.parquet"
from pipeline.core.runtime import DEFAULT_SEED  # noqa: E402  (re-exported for the CLI)
#: Default --precision of search and batch scoring (choices and the "auto" rule:
#: :mod:`pipeline.core.onnx`).
DEFAULT_PRECISION = "auto"
#: Top-level pipeline.toml keys that set the option of that name in every command having it.
#: Why: the product text fields must agree across training, indexing and reranking, so one
#: line should set them for all.
SHARED_KEYS = ("text_fields",)


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


def flag_name(param: Any) -> str:
    """What a user calls an option: its first long flag without dashes (``json`` for
    ``--json``, ``index-type``); arguments keep their own name."""
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:] if longs and getattr(param, "param_type_name", "") == "option" else param.name


def default_map(cli: Any, path: Path | None = None) -> dict[str, Any]:
    """Click ``default_map`` (command name -> option name -> value) from the config file.

    A table or key that matches no command or option is refused, naming the closest valid
    one. Why refuse rather than warn: Click's ``default_map`` ignores unknown names, so a
    typo such as ``[serach]`` would leave every setting in it silently without effect.
    """
    import difflib

    where = path or config_path()
    config = load_config(path)
    shared = {key: _as_option_value(config.pop(spelling))
              for key in SHARED_KEYS for spelling in (key, key.replace("_", "-")) if spelling in config}

    def resolve(node: dict[str, Any], command: Any, trail: tuple[str, ...]) -> dict[str, Any]:
        subcommands = getattr(command, "commands", None) or {}
        spellings: dict[str, str] = {}
        for param in getattr(command, "params", []):
            if param.name != "help":
                flag = flag_name(param)
                for key in (param.name, param.name.replace("_", "-"), flag, flag.replace("-", "_")):
                    spellings.setdefault(key, param.name)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, dict):
                name = key.replace("_", "-")
                if name in subcommands:
                    out[name] = resolve(value, subcommands[name], (*trail, name))
                    continue
                close = difflib.get_close_matches(name, sorted(subcommands), n=1, cutoff=0.5)
                hint = f"; did you mean [{'.'.join((*trail, close[0]))}]?" if close else ""
                raise ShoprankError(f"{where}: unknown table [{'.'.join((*trail, name))}] (no such command){hint}")
            if key in spellings:
                name = spellings[key]
                out[name] = _as_option_value(value) if name in SHARED_KEYS else value
                continue
            flags = sorted({flag_name(p) for p in getattr(command, "params", []) if p.name != "help"})
            close = difflib.get_close_matches(key.replace("_", "-"), flags, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            table = f"[{'.'.join(trail)}]" if trail else "the top level"
            raise ShoprankError(f"{where}: unknown key {key!r} in {table} (no such option){hint}")
        return out

    resolved = resolve(config, cli, ())
    for trail, command in _walk_commands(cli):
        wanted = {k: v for k, v in shared.items() if k in {param.name for param in command.params}}
        if wanted:
            table = resolved
            for part in trail:
                table = table.setdefault(part, {})
            for key, value in wanted.items():
                table.setdefault(key, value)
    return resolved


def _as_option_value(value: Any) -> Any:
    """A TOML list for a comma-separated option (``text_fields = ["title", "description"]``)
    becomes the string the flag takes, so both spellings mean the same."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


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


def effective_settings(cli: Any, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-command effective option values (built-in default, or pipeline.toml override),
    keyed by flag name: ``{"search": {"k": {"value": 20, "source": "pipeline.toml"}, ...}, ...}``.

    ``defaults``: the resolved :func:`default_map` (read from the config file if not given).
    """
    defaults = default_map(cli) if defaults is None else defaults
    settings: dict[str, Any] = {}
    for path, command in _walk_commands(cli):
        table = _lookup(defaults, path)
        options: dict[str, Any] = {}
        for param in command.params:
            if param.name in ("help",) or getattr(param, "hidden", False):
                continue
            if param.name in table:
                options[flag_name(param)] = {"value": table[param.name], "source": CONFIG_FILE}
            else:
                default = param.default
                options[flag_name(param)] = {"value": None if default is None else
                                             (str(default) if isinstance(default, Path) else default),
                                             "source": "default"}
        settings[" ".join(path)] = options
    return settings
