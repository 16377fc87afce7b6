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

from pipeline.errors import ShoprankError

CONFIG_FILE = "pipeline.toml"

# Default locations, relative to the working directory (the demo writes them there).
DEFAULT_DATA_DIR = Path("data/sample")
DEFAULT_RETRIEVER_DIR = Path("models/retriever")
DEFAULT_RERANKER_DIR = Path("models/reranker")
DEFAULT_DOMAIN_BERT_DIR = Path("models/domain-bert")
DEFAULT_INDEX_DIR = Path("indexes/default")
DEFAULT_SEED = 13


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
