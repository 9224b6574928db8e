"""`egressguard keyvault`: the built-in key vault (customer-managed keys) in the `az
keyvault` idiom.

    egressguard keyvault create --vault cmk --retention-days 90
    egressguard keyvault key create --name audit --kty RSA --size 3072
    egressguard keyvault key rotate|disable|enable|delete|recover|purge --name audit
    egressguard keyvault access grant --identity gateway --permissions get,wrapKey,unwrapKey

Keys live in the store (`--store`), sealed under the master key (`$EGRESSGUARD_MASTER_KEY`
or `<data home>/master.key`). The `default` vault is created on first use with soft delete
(90 days) and purge protection; other vaults with `keyvault create`. Exit status: 0 done,
2 refused or bad input (one line on stderr, with a hint).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from egressguard.cli.output import Format, OutputOpt, emit
from egressguard.keys.master import load_master_key
from egressguard.keys.provider import KeyInfo, KeyNotFound, KeyProviderError
from egressguard.keys.vault import KeyVault

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE",
    help="store URL (sqlite:///file.db or postgresql://...); default the embedded store")]
VaultOpt = Annotated[str, typer.Option("--vault", help="vault name")]
KeyOpt = Annotated[str, typer.Option("--name", "-n", help="key name")]
IdentityOpt = Annotated[str, typer.Option("--identity", help="identity name")]
PermsOpt = Annotated[str, typer.Option("--permissions",
                                       help="comma list of get, wrapKey, unwrapKey")]
DEFAULT_VAULT = "default"

app = typer.Typer(help="Customer-managed keys in the built-in key vault.",
                  no_args_is_help=True)
key_app = typer.Typer(help="Create, rotate, disable, delete and recover keys.",
                      no_args_is_help=True)
access_app = typer.Typer(help="Access policies: which identities may get, wrap and unwrap.",
                         no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _vault(store: str | None, name: str, **create: Any) -> Iterator[KeyVault]:
    from egressguard.store.urls import StoreURLError

    try:
        if store is None:
            from egressguard.paths import default_store_url
            store = default_store_url()
        vault = KeyVault(store, name, master_key=load_master_key(),
                         create=bool(create) or name == DEFAULT_VAULT, **create)
    except (KeyProviderError, StoreURLError) as exc:
        raise _fail(str(exc)) from None
    try:
        yield vault
    except KeyNotFound as exc:
        hint = (f" (create it: egressguard keyvault create --vault {name})"
                if str(exc).startswith("vault ") else "")
        raise _fail(f"{exc}{hint}") from None
    except KeyProviderError as exc:
        raise _fail(str(exc)) from None
    finally:
        vault.close()


def _emit(data: Any, output: Format, table: Table) -> None:
    emit(data, output, lambda: table)


def _key_table(infos: list[KeyInfo]) -> Table:
    table = Table("Name", "Type", "Size", "Enabled", "Versions", "Latest", "Deleted")
    for i in infos:
        table.add_row(i.name, i.kty, str(i.size), "yes" if i.enabled else "no",
                      str(len(i.versions)), i.latest,
                      str(i.attributes.get("deletedAt", "")))
    return table


def _show(info: KeyInfo, output: Format) -> None:
    _emit(info.as_dict(), output, _key_table([info]))


@app.command("create")
def vault_create(
    vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
    retention_days: Annotated[int, typer.Option(help="soft-delete retention, 7-90")] = 90,
    soft_delete: Annotated[bool, typer.Option(help="keep deleted keys recoverable")] = True,
    purge_protection: Annotated[bool, typer.Option(
        help="refuse purge until retention ends (irreversible)")] = True,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Create a vault (an existing vault keeps its settings)."""
    with _vault(store, vault, soft_delete=soft_delete, retention_days=retention_days,
                purge_protection=purge_protection) as v:
        props = v.properties()
    table = Table("Property", "Value")
    for k, val in props.as_dict().items():
        table.add_row(k, str(val))
    _emit(props.as_dict(), output, table)


@app.command("show")
def vault_show(vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
               output: OutputOpt = Format.TABLE) -> None:
    """Show a vault's settings (soft delete, retention, purge protection)."""
    with _vault(store, vault) as v:
        props = v.properties()
    table = Table("Property", "Value")
    for k, val in props.as_dict().items():
        table.add_row(k, str(val))
    _emit(props.as_dict(), output, table)


@key_app.command("create")
def key_create(
    name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
    kty: Annotated[str, typer.Option(help="RSA or AES")] = "RSA",
    size: Annotated[int, typer.Option(help="RSA 2048/3072/4096, AES 256")] = 2048,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Create a key (its first version)."""
    with _vault(store, vault) as v:
        _show(v.create_key(name, kty.upper(), size), output)


@key_app.command("list")
def key_list(vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
             deleted: Annotated[bool, typer.Option(help="soft-deleted keys only")] = False,
             output: OutputOpt = Format.TABLE) -> None:
    """List the vault's keys."""
    with _vault(store, vault) as v:
        infos = v.list_keys(deleted=deleted)
    _emit([i.as_dict() for i in infos], output, _key_table(infos))


@key_app.command("show")
def key_show(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
             output: OutputOpt = Format.TABLE) -> None:
    """Show a key, its versions and state (deleted keys too)."""
    with _vault(store, vault) as v:
        _show(v.get_key(name, include_deleted=True), output)


@key_app.command("rotate")
def key_rotate(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
               output: OutputOpt = Format.TABLE) -> None:
    """Add a new version; data keys wrapped from now on use it, old data stays readable."""
    with _vault(store, vault) as v:
        _show(v.rotate_key(name), output)


@key_app.command("disable")
def key_disable(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
                output: OutputOpt = Format.TABLE) -> None:
    """Disable a key: clusters using it suspend within their check interval."""
    with _vault(store, vault) as v:
        _show(v.set_enabled(name, False), output)


@key_app.command("enable")
def key_enable(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
               output: OutputOpt = Format.TABLE) -> None:
    """Enable a key again."""
    with _vault(store, vault) as v:
        _show(v.set_enabled(name, True), output)


@key_app.command("delete")
def key_delete(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
               output: OutputOpt = Format.TABLE) -> None:
    """Soft-delete a key (recoverable for the vault's retention period)."""
    with _vault(store, vault) as v:
        v.delete_key(name)
        try:
            _show(v.get_key(name, include_deleted=True), output)
        except KeyNotFound:  # a vault without soft delete purged it
            _emit({"name": name, "purged": True}, output, Table(f"key {name} purged"))


@key_app.command("recover")
def key_recover(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
                output: OutputOpt = Format.TABLE) -> None:
    """Recover a soft-deleted key with all its versions."""
    with _vault(store, vault) as v:
        _show(v.recover_key(name), output)


@key_app.command("purge")
def key_purge(name: KeyOpt, vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
              output: OutputOpt = Format.TABLE) -> None:
    """Destroy a soft-deleted key for good (refused while purge protection is on)."""
    with _vault(store, vault) as v:
        v.purge_key(name)
    _emit({"name": name, "purged": True}, output, Table(f"key {name} purged"))


def _access_table(policies: dict[str, frozenset[str]]) -> Table:
    table = Table("Identity", "Permissions")
    for identity, perms in policies.items():
        table.add_row(identity, ",".join(sorted(perms)))
    return table


def _policies(v: KeyVault, output: Format) -> None:
    policies = v.access_policies()
    _emit({k: sorted(p) for k, p in policies.items()}, output, _access_table(policies))


@access_app.command("grant")
def access_grant(identity: IdentityOpt, permissions: PermsOpt,
                 vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
                 output: OutputOpt = Format.TABLE) -> None:
    """Grant permissions on the vault's keys to an identity."""
    with _vault(store, vault) as v:
        v.grant(identity, permissions)
        _policies(v, output)


@access_app.command("revoke")
def access_revoke(identity: IdentityOpt, permissions: PermsOpt,
                  vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
                  output: OutputOpt = Format.TABLE) -> None:
    """Revoke permissions: a cluster whose identity loses one suspends."""
    with _vault(store, vault) as v:
        v.revoke(identity, permissions)
        _policies(v, output)


@access_app.command("list")
def access_list(vault: VaultOpt = DEFAULT_VAULT, store: StoreOpt = None,
                output: OutputOpt = Format.TABLE) -> None:
    """List the vault's access policies."""
    with _vault(store, vault) as v:
        _policies(v, output)


app.add_typer(key_app, name="key")
app.add_typer(access_app, name="access")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keyvault")
