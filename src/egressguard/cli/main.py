"""Assemble the `egressguard` command from the per-area modules.

Each area module (`egressguard.cli.<area>`) exposes `register(app)`. Importing every area
costs over a second (FastAPI, SQLAlchemy, Alembic), so the command named on the command
line loads only its own area; `--help` and unknown commands load them all.

Errors are handled once, here (`_Guarded.invoke`): any `EgressguardError` prints one line,
`error: <message> (hint: <hint>)`, and exits 2; anything else prints one line naming the
type and exits 2 too. A traceback only with the global `--debug` (or $EGRESSGUARD_DEBUG).
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from egressguard import config
from egressguard.cli.check import check
from egressguard.errors import EgressguardError

EXIT_ERROR = 2

# The command tree in one place: top-level command -> the area module that defines it.
AREAS: dict[str, str] = {
    "serve": "egressguard.cli.serve",
    "apply": "egressguard.cli.policyascode", "validate": "egressguard.cli.policyascode",
    "mgmt": "egressguard.cli.control",
    "cluster": "egressguard.cli.control",
    "versions": "egressguard.cli.control",
    "rollback": "egressguard.cli.control",
    "token": "egressguard.cli.control",
    "identity": "egressguard.cli.identity",
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
    "keyvault": "egressguard.cli.keyvault",
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


STORE_HINT = ("check that the database server runs, or the SQLite file's folder is writable, "
              "and that --store / EGRESSGUARD_STORE names it")


def error_line(exc: BaseException) -> str:
    """The one line a command prints for `exc` (no traceback)."""
    if isinstance(exc, EgressguardError):
        return f"error: {exc} (hint: {exc.hint})" if exc.hint else f"error: {exc}"
    if type(exc).__module__.startswith("sqlalchemy"):  # loaded only when the store is
        from egressguard.store import unavailable_reason

        if (reason := unavailable_reason(exc)) is not None:
            return f"error: cannot reach the store: {reason} (hint: {STORE_HINT})"
    if isinstance(exc, OSError):
        return f"error: {exc}"
    # A bug: say so, and how to see where.
    return (f"error: unexpected {type(exc).__name__}: {exc} "
            "(hint: rerun with --debug to see the traceback)")


class _Guarded(TyperGroup):
    """The root group: turns an exception from any command into one line and exit 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context (private)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own exits
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            typer.echo(error_line(exc), err=True)
            raise typer.Exit(EXIT_ERROR) from None


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The CLI with the areas `argv` needs (all of them when `argv` is None)."""
    app = typer.Typer(
        name="egressguard", no_args_is_help=True, add_completion=False, cls=_Guarded,
        pretty_exceptions_show_locals=False,  # locals may hold tokens and keys
        help="Self-hosted egress gateway and outbound-access policy system.")
    app.command()(check)

    @app.callback()
    def _root(home: Annotated[str | None, typer.Option(
            "--home", help="data home (store, audit key, catalogs); default "
                           "$EGRESSGUARD_HOME, the config file's `home`, else "
                           "~/.local/share/egressguard (/var/lib/egressguard as root)")
            ] = None,
            debug: Annotated[bool, typer.Option(
                "--debug", envvar="EGRESSGUARD_DEBUG",
                help="on an error, show the traceback instead of one line")] = False,
            ) -> None:
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
