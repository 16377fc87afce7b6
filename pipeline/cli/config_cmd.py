"""`pipeline config show`: the effective settings (defaults overridden by pipeline.toml)."""
from __future__ import annotations

import typer

from pipeline.cli._app import App, app, echo, emit_json

config_app = App(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _defaults() -> dict[str, object]:
    """The built-in default paths and seed (what a command uses when nothing overrides it)."""
    from pipeline import config

    return {"data_dir": str(config.DEFAULT_DATA_DIR), "retriever": str(config.DEFAULT_RETRIEVER_DIR),
            "reranker": str(config.DEFAULT_RERANKER_DIR), "domain_bert": str(config.DEFAULT_DOMAIN_BERT_DIR),
            "index": str(config.DEFAULT_INDEX_DIR), "seed": config.DEFAULT_SEED}


@config_app.command("show")
def show(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of TOML.")) -> None:
    """Print the effective settings: built-in default paths, and every command's option
    values (by flag name, as pipeline.toml takes them) after pipeline.toml overrides (flags
    given on a command line still win)."""
    import tomli_w
    import typer.main

    from pipeline import config

    settings = config.effective_settings(typer.main.get_command(app))
    effective = {
        "config_file": str(config.config_path()) if config.config_path().is_file() else None,
        "defaults": _defaults(),
        "commands": config.load_config(),
        "effective": settings,
    }
    if json_out:
        emit_json(effective)
    else:
        # TOML has no null: options without a default are left out of the text view.
        flat = {cmd: {name: opt["value"] for name, opt in opts.items() if opt["value"] is not None}
                for cmd, opts in settings.items()}
        clean = {k: v for k, v in effective.items() if v is not None and k not in ("effective", "commands")}
        clean["effective"] = {cmd: opts for cmd, opts in flat.items() if opts}
        echo(tomli_w.dumps(clean))
