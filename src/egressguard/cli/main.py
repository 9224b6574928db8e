"""Assemble the `egressguard` command from the per-area modules."""

from __future__ import annotations

import importlib

import typer

from egressguard.cli.check import check

app = typer.Typer(
    name="egressguard", no_args_is_help=True, add_completion=False,
    help="Self-hosted egress gateway and outbound-access policy system.")
app.command()(check)


@app.callback()
def _root() -> None:
    """Self-hosted egress gateway and outbound-access policy system."""

# Each area registers its commands with `register(app)`; listed here so that the command
# tree is visible in one place.
_AREAS = (
    "egressguard.cli.serve",
    "egressguard.cli.control",
    "egressguard.cli.catalog",
    "egressguard.cli.evidence",
    "egressguard.cli.analysis",
    "egressguard.cli.dns",
)
for _name in _AREAS:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
