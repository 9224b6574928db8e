"""Assemble the `egressguard` command from the per-area modules.

Each area module (`egressguard.cli.<area>`) exposes `register(app)`. Importing every area
costs over a second (FastAPI, SQLAlchemy, Alembic), so the command named on the command
line loads only its own area; `--help` and unknown commands load them all.
"""

from __future__ import annotations

import importlib
import sys

import typer

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
    "keyvault": "egressguard.cli.keyvault",
}


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The CLI with the areas `argv` needs (all of them when `argv` is None)."""
    app = typer.Typer(
        name="egressguard", no_args_is_help=True, add_completion=False,
        help="Self-hosted egress gateway and outbound-access policy system.")
    app.command()(check)

    @app.callback()
    def _root() -> None:
        """Self-hosted egress gateway and outbound-access policy system."""

    command = next((a for a in argv or [] if not a.startswith("-")), None)
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
