"""Assemble the `egressguard` command from the per-area modules.

Each area module (`egressguard.cli.<area>`) exposes `register(app)`. Importing every area
costs over a second (FastAPI, SQLAlchemy, Alembic), so the command named on the command
line loads only its own area; `--help`, `--version`, no command and unknown commands load
none: the root lists each command from `SUMMARIES` (tests/cli/test_startup.py keeps those
equal to the commands' own help).

Errors are handled once, here (`_Guarded.invoke` and `main`): any `EgressguardError` prints
one line, `error: <message> (hint: <hint>)`, and exits 2; a usage error (unknown option,
bad value) one line with a `--help` hint, exit 2; anything else one line naming the type,
exit 2 too. A traceback only with the global `--debug` (or $EGRESSGUARD_DEBUG). Exit codes:
docs/cli.md.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from egressguard.store.sealing import Resolver

from egressguard import config
from egressguard.errors import EgressguardError

EXIT_ERROR = 2

# The command tree in one place: top-level command -> the area module that defines it.
AREAS: dict[str, str] = {
    "check": "egressguard.cli.check",
    "serve": "egressguard.cli.serve",
    "apply": "egressguard.cli.policyascode", "validate": "egressguard.cli.policyascode",
    "mgmt": "egressguard.cli.control",
    "cluster": "egressguard.cli.control",
    "versions": "egressguard.cli.control",
    "rollback": "egressguard.cli.control",
    "token": "egressguard.cli.control",
    "identity": "egressguard.cli.identity",
    "api": "egressguard.cli.control",
    "login": "egressguard.cli.control", "logout": "egressguard.cli.control",
    "catalog": "egressguard.cli.catalog",
    "profile": "egressguard.cli.catalog",
    "servicetags": "egressguard.cli.catalog",
    "storage-accounts": "egressguard.cli.catalog",
    "logs": "egressguard.cli.evidence",
    "recommend": "egressguard.cli.evidence",
    "analyze": "egressguard.cli.analysis",
    "simulate": "egressguard.cli.analysis",
    "explain": "egressguard.cli.analysis",
    "dns": "egressguard.cli.dns",
    "firewall": "egressguard.cli.firewall",
    "config": "egressguard.cli.settings",
    "export": "egressguard.cli.export",
    "keyvault": "egressguard.cli.keyvault",
    "test": "egressguard.cli.assurance", "ceiling": "egressguard.cli.assurance",
    "replay": "egressguard.cli.assurance",
}

# What `egressguard --help` says of each command without importing it: its own first line.
SUMMARIES: dict[str, str] = {
    "check": "Decide one outbound call.",
    "serve": "Run the gateway: an HTTP/HTTPS forward proxy that enforces the policy.",
    "apply": "Make FILE the cluster's policy: one new version if its content differs from "
             "the current version, none if it does not.",
    "validate": "Check policy files as `apply` would, without a store (for CI).",
    "login": "Check a token against a server and store the server (and the token file's "
             "path, never the token) in the config file: control-plane commands then go "
             "through it.",
    "logout": "Forget the server (the config file's api, token_file and ca_file): commands "
              "use the store directly again.",
    "mgmt": "Run a Kusto-style management command (.show/.alter/.alter-merge/.delete "
            "cluster policy callout).",
    "rollback": "Make a new version with the content of version NUMBER.",
    "api": "Run the control-plane REST API alone.",
    "recommend": "Propose a least-privilege policy that allows exactly the observed traffic.",
    "analyze": "List the exfiltration paths and dead rules of a policy, most severe first.",
    "simulate": "Decide every request of a list under the policy in force and a proposed "
                "one.",
    "explain": "Explain a denial: the layer and rule, the smallest change that would "
               "allow it, and the risk findings that change would raise.",
    "export": "Compile the policy for another enforcer: squid, cilium, kubernetes, "
              "azure-firewall, nftables, or yaml (the policy file itself).",
    "test": "Run a policy file's assertions (exit 0 all pass, 1 one fails, 2 bad input).",
    "replay": "Re-decide the audit log's recorded requests under a candidate policy and "
              "report what would flip (newly denied / newly allowed, per client and "
              "destination).",
    "cluster": "Show and update clusters (ARM-style properties).",
    "versions": "A cluster's immutable policy versions.",
    "token": "API tokens (stored hashed; shown once).",
    "identity": "Workload identities (proxy secrets stored hashed, shown once; SPIFFE IDs, "
                "CNs and JWT subjects).",
    "catalog": "Browse the shipped requirement catalogs.",
    "profile": "Generate the least policy a deployment needs.",
    "servicetags": "Import and inspect Azure service tags.",
    "storage-accounts": "The storage accounts egressguard knows: resource-group and "
                        "subscription entries of service endpoint policies match them, and "
                        "an alias covers the ones listed for it.",
    "logs": "Query, follow, prune and verify the audit log.",
    "dns": "DNS filter: answer only names the policy allows.",
    "firewall": "Kernel (nftables) enforcement of the policy's network rules; fail closed.",
    "config": "The settings every command uses (data home, store, cluster, API).",
    "keyvault": "Customer-managed keys in the built-in key vault.",
    "ceiling": "A cluster's ceiling: the most any of its policies may allow (admins only "
               "through the API).",
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


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"egressguard {version('egressguard')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("egressguard (not installed)")
        raise typer.Exit(0)


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The CLI with the areas `argv` needs: all of them when `argv` is None (tests), only
    the named command's when it names one, none otherwise (help: stand-ins)."""
    from egressguard.store import sealing

    # Every store this process opens seals (and opens) each cluster's policy versions
    # under the cluster's customer-managed key, if it names one (docs/keys.md).
    sealing.install(_store_keys)
    app = typer.Typer(
        name="egressguard", no_args_is_help=True, cls=_Guarded,
        pretty_exceptions_show_locals=False,  # locals may hold tokens and keys
        help="Self-hosted egress gateway and outbound-access policy system.")

    @app.callback()
    def _root(home: Annotated[str | None, typer.Option(
            "--home", help="data home (store, audit key, catalogs); default "
                           "$EGRESSGUARD_HOME, the config file's `home`, else "
                           "~/.local/share/egressguard (/var/lib/egressguard as root)")
            ] = None,
            debug: Annotated[bool, typer.Option(
                "--debug", envvar="EGRESSGUARD_DEBUG",
                help="on an error, show the traceback instead of one line")] = False,
            version: Annotated[bool, typer.Option(
                "--version", is_eager=True, callback=_version,
                help="print the version and exit")] = False,
            ) -> None:
        """Self-hosted egress gateway and outbound-access policy system."""
        config.set_home_flag(home)
        try:
            config.current()
        except config.ConfigError as exc:
            typer.echo(f"error: {exc} (hint: fix that file, or name another with "
                       "$EGRESSGUARD_CONFIG)", err=True)
            raise typer.Exit(2) from None

    if argv is None:
        wanted = list(dict.fromkeys(AREAS.values()))
    elif (command := _command_name(argv)) in AREAS:
        wanted = [AREAS[command]]
    else:
        wanted = []
        for name in AREAS:
            app.registered_commands.append(typer.models.CommandInfo(
                name=name, help=SUMMARIES.get(name), callback=_never))
    for module in wanted:
        importlib.import_module(module).register(app)
    return app


def _never() -> None:
    """A stand-in's body: never runs (main loads the area of the command it runs)."""
    raise AssertionError("a stand-in command ran")


def __getattr__(name: str) -> typer.Typer:
    """`egressguard.cli.main.app`: the full CLI, built on first access (for tests)."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


def _store_keys(store: Any) -> Resolver:
    from egressguard.keys.runtime import StoreKeys  # (cryptography: only with a store)

    return StoreKeys.for_store(store)


def _completion_argv() -> list[str] | None:
    """The words typed so far when the shell asks for completions (typer's protocol)."""
    if "_EGRESSGUARD_COMPLETE" not in os.environ:
        return None
    words = os.environ.get("COMP_WORDS") or os.environ.get("_TYPER_COMPLETE_ARGS", "")
    try:
        return shlex.split(words)[1:]
    except ValueError:  # an unclosed quote mid-typing
        return []


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage errors are one line with a `--help` hint, exit 2."""
    from typer import _click

    args = sys.argv[1:] if argv is None else argv
    completing = _completion_argv()
    command = typer.main.get_command(build_app(args if completing is None else completing))
    try:
        code = command.main(args=args, prog_name="egressguard", standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        code = EXIT_ERROR
    except _click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "egressguard"
        message = exc.format_message().replace("Value error, ", "")  # typer's pydantic
        typer.echo(f"error: {message} (hint: see `{where} --help`)", err=True)
        code = EXIT_ERROR
    except _click.exceptions.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
