"""`egressguard identity`: workload identities in the store (create prints the proxy
secret once; list, show, rotate, revoke, enable, disable). Gateways following the store
apply a change within a second. Exit status: 0 done, 2 refused or bad input."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from egressguard.cli.output import Format, OutputOpt, emit, is_data
from egressguard.identity.model import StoredIdentity
from egressguard.identity.store import IdentityStore
from egressguard.store import open_store

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE",
    help="store URL (sqlite:///file.db or postgresql://...); default the configured store")]
ExpiresOpt = Annotated[str | None, typer.Option(
    "--expires", help="lifetime of the secret, e.g. 30d, 12h (default: no expiry)")]
NameArg = Annotated[str, typer.Argument(help="identity name (as rules name it)")]

identity_app = typer.Typer(help="Workload identities (proxy secrets stored hashed, shown "
                                "once; SPIFFE IDs, CNs and JWT subjects).",
                           no_args_is_help=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _lifetime(text: str | None) -> float | None:
    if text is None:
        return None
    from egressguard.store.tokens import parse_lifetime

    try:
        return parse_lifetime(text)
    except ValueError as exc:
        typer.echo(f"error: --expires: {exc}", err=True)
        raise typer.Exit(2) from None


def _print(identity: StoredIdentity, output: Format, secret: str | None = None) -> None:
    data = identity.as_dict()
    if is_data(output):
        emit({**data, **({"secret": secret} if secret else {})}, output)
        return
    for key, value in data.items():
        if value not in (None, [], ""):
            shown = ", ".join(value) if isinstance(value, list) else value
            typer.echo(f"{key}: {shown}")
    if secret:
        typer.echo("proxy secret (store it now, it is not shown again; use it as "
                   f"Proxy-Authorization: Basic base64({identity.name}:SECRET)):\n{secret}")


@identity_app.command("create")
def create(name: NameArg, store: StoreOpt = None, output: OutputOpt = Format.TABLE,
           description: Annotated[str, typer.Option(help="what the workload is")] = "",
           expires: ExpiresOpt = None,
           spiffe_id: Annotated[list[str] | None, typer.Option(
               "--spiffe-id", help="SPIFFE ID of its client certificate (repeatable)")] = None,
           cn: Annotated[list[str] | None, typer.Option(
               "--cn", help="subject CN of its client certificate (repeatable)")] = None,
           jwt_subject: Annotated[list[str] | None, typer.Option(
               "--jwt-subject", help="`sub` of its workload token (repeatable)")] = None,
           secret: Annotated[bool, typer.Option(
               help="issue a proxy secret (Basic); --no-secret for certificate or token "
                    "identities")] = True) -> None:
    """Create an identity; its proxy secret is printed once."""
    lifetime = _lifetime(expires)
    with open_store(store) as st:
        issued, identity = IdentityStore(st).create(
            name, _user(), description=description, lifetime=lifetime, secret=secret,
            spiffe_ids=spiffe_id or [], common_names=cn or [], jwt_subjects=jwt_subject or [])
    _print(identity, output, issued)


@identity_app.command("list")
def list_(store: StoreOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Every identity with its state and methods (never a secret)."""
    with open_store(store) as st:
        found = IdentityStore(st).list()
    if is_data(output):
        emit([i.as_dict() for i in found], output)
        return
    for i in found:
        d = i.as_dict()
        typer.echo(f"{i.name}\t{d['state']}\t{','.join(d['methods']) or '-'}\t"
                   f"expires {d['expires_at'] or 'never'}\t{i.description}")


@identity_app.command("show")
def show(name: NameArg, store: StoreOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """One identity."""
    with open_store(store) as st:
        _print(IdentityStore(st).show(name), output)


@identity_app.command("rotate")
def rotate(name: NameArg, store: StoreOpt = None, output: OutputOpt = Format.TABLE,
           expires: ExpiresOpt = None) -> None:
    """Issue a new proxy secret (printed once); the old one stops working at once."""
    lifetime = _lifetime(expires)
    with open_store(store) as st:
        issued, identity = IdentityStore(st).rotate(name, lifetime=lifetime)
    _print(identity, output, issued)


@identity_app.command("revoke")
def revoke(name: NameArg, store: StoreOpt = None) -> None:
    """Revoke: the secret is erased and no method of the identity authenticates."""
    with open_store(store) as st:
        IdentityStore(st).revoke(name)
    typer.echo(f"revoked identity {name}")


@identity_app.command("disable")
def disable(name: NameArg, store: StoreOpt = None) -> None:
    """Stop the identity authenticating until `enable` (its secret is kept)."""
    with open_store(store) as st:
        IdentityStore(st).set_enabled(name, False)
    typer.echo(f"disabled identity {name}")


@identity_app.command("enable")
def enable(name: NameArg, store: StoreOpt = None) -> None:
    """Let a disabled identity authenticate again."""
    with open_store(store) as st:
        IdentityStore(st).set_enabled(name, True)
    typer.echo(f"enabled identity {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(identity_app, name="identity")
