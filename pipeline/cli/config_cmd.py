"""`pipeline config show`: the effective settings (defaults overridden by pipeline.toml)."""
from __future__ import annotations

import typer

from pipeline.cli._app import app, emit_json

config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of TOML.")) -> None:
    """Print the effective settings: built-in default paths plus pipeline.toml overrides."""
    import tomli_w

    from pipeline import config

    effective = {
        "config_file": str(config.config_path()) if config.config_path().is_file() else None,
        "defaults": {
            "data_dir": str(config.DEFAULT_DATA_DIR),
            "retriever": str(config.DEFAULT_RETRIEVER_DIR),
            "reranker": str(config.DEFAULT_RERANKER_DIR),
            "domain_bert": str(config.DEFAULT_DOMAIN_BERT_DIR),
            "index": str(config.DEFAULT_INDEX_DIR),
            "seed": config.DEFAULT_SEED,
        },
        "commands": config.load_config(),
    }
    if json_out:
        emit_json(effective)
    else:
        clean = {k: v for k, v in effective.items() if v is not None}
        typer.echo(tomli_w.dumps(clean))
