"""`egressguard config show`: the settings in effect and where each came from."""

from __future__ import annotations

import typer

from egressguard import config
from egressguard.cli.output import Format, OutputOpt, emit, is_data

config_app = typer.Typer(help="The settings every command uses (data home, store, cluster, "
                              "API).", no_args_is_help=True)


def _redact(url: str | None) -> str | None:
    """A store URL without its password (the file may be shown on a shared screen)."""
    if not url or "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


@config_app.command("show")
def show(output: OutputOpt = Format.TABLE) -> None:
    """Print the data home, store, cluster and API in effect, each with its source."""
    try:
        settings = config.current()
    except config.ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    data = settings.as_dict()
    data["store"]["value"] = _redact(data["store"]["value"])
    if is_data(output):
        emit(data, output)
        return
    typer.echo(f"config file  {data['config_file'] or '(none)'}")
    for key in config.KEYS:
        value = data[key]["value"]
        typer.echo(f"{key:<12} {value if value is not None else '(none)'}"
                   f"  [{data[key]['source']}]")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
