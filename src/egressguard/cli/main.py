"""Assemble the `egressguard` command from the per-area modules.

Each area module (`egressguard.cli.<area>`) exposes `register(app)`. Importing every area
costs over a second (FastAPI, SQLAlchemy, Alembic), so the command named on the command
line loads only its own area; `--help` and unknown commands load them all.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from egressguard import config
from egressguard.cli.check import check

# The command tree in one place: top-level command -> the area module that defines it.
AREAS: dict[str, str] = {
    "serve": "egressguard.cli.serve",
    "mgmt": "egressguard.cli.control",
    "cluster": "egressguard.cli.control",
    "versions": "egressguard.cli.control",
    "rollback": "egressguard.cli.control",
    "token": "egressguard.cli.control",
    "api": "egressguard.cli.control",
    "catalog": "egressguard.cli.catalog",
    "profile": "egressguard.cli.catalog",
    "servicetags": "egressguard.cli.catalog",
    "logs": "egressguard.cli.evidence",
    "recommend": "egressguard.cli.evidence",
    "analyze": "egressguard.cli.analysis",
    "simulate": "egressguard.cli.analysis",
    "dns": "egressguard.cli.dns",
    "firewall": "egressguard.cli.firewall",
    "config": "egressguard.cli.settings",
    "export": "egressguard.cli.export",
    "test": "egressguard.cli.assurance", "ceiling": "egressguard.cli.assurance",
    "replay": "egressguard.cli.assurance",
}


def _command_name(argv: list[str]) -> str | None:
    """The command named in `argv`, skipping the root options (`--home PATH`)."""
    args = iter(argv)
    for arg in args:
        if arg == "--home":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The CLI with the areas `argv` needs (all of them when `argv` is None)."""
    app = typer.Typer(
        name="egressguard", no_args_is_help=True, add_completion=False,
        help="Self-hosted egress gateway and outbound-access policy system.")
    app.command()(check)

    @app.callback()
    def _root(home: Annotated[str | None, typer.Option(
            "--home", help="data home (store, audit key, catalogs); default "
                           "$EGRESSGUARD_HOME, the config file's `home`, else "
                           "~/.local/share/egressguard (/var/lib/egressguard as root)")
            ] = None) -> None:
        """Self-hosted egress gateway and outbound-access policy system."""
        config.set_home_flag(home)
        try:
            config.current()
        except config.ConfigError as exc:
            typer.echo(f"error: {exc} (fix that file, or name another with "
                       "$EGRESSGUARD_CONFIG)", err=True)
            raise typer.Exit(2) from None

    command = _command_name(argv or [])
    if command == "check":
        wanted: list[str] = []
    elif command in AREAS:
        wanted = [AREAS[command]]
    else:
        wanted = list(dict.fromkeys(AREAS.values()))
    for name in wanted:
        importlib.import_module(name).register(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    """`egressguard.cli.main.app`: the full CLI, built on first access (for tests)."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main() -> None:
    build_app(sys.argv[1:])()


if __name__ == "__main__":
    main()
