"""The ARM cluster property `keyVaultProperties: {keyName, keyVersion, keyVaultUri,
userIdentity}`: its shape, and whether the vault and identity it names are fit to hold a
cluster's root key.

`parse` and `refusals` are pure: `gather` does the I/O (reads the vault) and hands them
facts. A cluster's key must sit in a vault with soft delete and purge protection (else one
mistaken delete or purge destroys every record), and its identity needs get, wrapKey and
unwrapKey (else the cluster would start suspended). Each refusal names the field and says
how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from egressguard.errors import InputError
from egressguard.keys.provider import PERMISSIONS, KeyInfo, KeyUnavailable

FIELD = "properties.keyVaultProperties"
MEMBERS = ("keyName", "keyVersion", "keyVaultUri", "userIdentity")
_VERSION = re.compile(r"[0-9a-fA-F]{1,64}")
_KEY_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VAULT_URI = re.compile(r"vault://([a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?)/?")


class InvalidKeyVaultProperties(InputError, ValueError):
    """`problems` are (field, reason) pairs, as the API reports them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {r}" for f, r in problems))
        self.problems = problems


@dataclass(frozen=True)
class KeyVaultProperties:
    key_name: str
    key_vault_uri: str
    key_version: str | None = None  # None: follow the latest version
    user_identity: str | None = None  # None: the cluster's own identity

    @property
    def vault_name(self) -> str:
        match = _VAULT_URI.fullmatch(self.key_vault_uri)
        assert match is not None
        return match.group(1)

    def to_arm(self) -> dict[str, Any]:
        return {"keyName": self.key_name, "keyVersion": self.key_version or "",
                "keyVaultUri": self.key_vault_uri, "userIdentity": self.user_identity or ""}


@dataclass(frozen=True)
class VaultFacts:
    """What `gather` learnt about the vault, key and identity a property names."""

    soft_delete: bool
    purge_protection: bool
    retention_days: int
    identity: str
    permissions: frozenset[str]
    key: KeyInfo | None  # None: no such key
    key_problem: str = ""  # why the key could not be read, if it could not


def parse(value: Any) -> KeyVaultProperties:
    """The property's shape (no I/O); `InvalidKeyVaultProperties` naming each bad member."""
    if not isinstance(value, dict):
        raise InvalidKeyVaultProperties([(FIELD, "expected a JSON object with "
                                                 + ", ".join(MEMBERS))])
    problems = [(f"{FIELD}.{k}", "unknown member; expected one of " + ", ".join(MEMBERS))
                for k in value if k not in MEMBERS]
    for member in MEMBERS:
        item = value.get(member, "")
        if not isinstance(item, str):
            problems.append((f"{FIELD}.{member}", "expected a string"))
    if problems:
        raise InvalidKeyVaultProperties(problems)
    name, version = value.get("keyName", ""), value.get("keyVersion", "")
    uri, identity = value.get("keyVaultUri", ""), value.get("userIdentity", "")
    if not _KEY_NAME.fullmatch(name):
        problems.append((f"{FIELD}.keyName", "required: 1-127 letters, digits and '-'"))
    if version and not _VERSION.fullmatch(version):
        problems.append((f"{FIELD}.keyVersion", "a key version is hexadecimal; leave it "
                                                "empty to follow the latest"))
    if not _VAULT_URI.fullmatch(uri):
        problems.append((f"{FIELD}.keyVaultUri", "expected vault://<vault name> (the "
                                                 "built-in key vault)"))
    if len(identity) > 200:
        problems.append((f"{FIELD}.userIdentity", "at most 200 characters"))
    if problems:
        raise InvalidKeyVaultProperties(problems)
    return KeyVaultProperties(name, uri.rstrip("/"), version or None, identity or None)


def refusals(props: KeyVaultProperties, facts: VaultFacts) -> list[tuple[str, str]]:
    """Why this vault, key and identity cannot hold the cluster's key (empty: they can)."""
    out: list[tuple[str, str]] = []
    vault = props.vault_name
    if not facts.soft_delete:
        out.append((f"{FIELD}.keyVaultUri", f"vault {vault!r} has soft delete off: a "
                    "deleted key would be gone at once; use a vault with soft delete"))
    if not facts.purge_protection:
        out.append((f"{FIELD}.keyVaultUri", f"vault {vault!r} has no purge protection: a "
                    "purge would make every record unreadable; enable it first"))
    missing = [p for p in PERMISSIONS if p not in facts.permissions]
    if missing:
        out.append((f"{FIELD}.userIdentity", f"identity {facts.identity!r} lacks "
                    f"{', '.join(missing)} on vault {vault!r}: egressguard keyvault access "
                    f"grant --vault {vault} --identity {facts.identity} "
                    "--permissions get,wrapKey,unwrapKey"))
    key = facts.key
    if key is None:
        out.append((f"{FIELD}.keyName", facts.key_problem
                    or f"key {props.key_name!r} not found in vault {vault!r}"))
    elif not key.enabled:
        out.append((f"{FIELD}.keyName", f"key {props.key_name!r} is disabled"))
    elif props.key_version and props.key_version not in key.versions:
        out.append((f"{FIELD}.keyVersion", f"key {props.key_name!r} has no version "
                    f"{props.key_version!r}"))
    return out


def gather(props: KeyVaultProperties, store_url: str, master_key: bytes,
           identity: str) -> VaultFacts:
    """Read the facts `refusals` needs from the built-in vault in `store_url`."""
    from egressguard.keys.vault import KeyVault

    vault = KeyVault(store_url, props.vault_name, master_key=master_key, create=False)
    try:
        settings = vault.properties()
        permissions = vault.access_policies().get(identity, frozenset())
        key: KeyInfo | None
        problem = ""
        try:
            key = vault.get_key(props.key_name)
        except KeyUnavailable as exc:
            key, problem = None, str(exc)
        return VaultFacts(settings.soft_delete, settings.purge_protection,
                          settings.retention_days, identity, permissions, key, problem)
    finally:
        vault.close()


def validate(value: Any, store_url: str, master_key: bytes,
             default_identity: str) -> KeyVaultProperties:
    """Parse, gather and check: the property, or `InvalidKeyVaultProperties`."""
    props = parse(value)
    try:
        facts = gather(props, store_url, master_key, props.user_identity or default_identity)
    except KeyUnavailable as exc:
        raise InvalidKeyVaultProperties([(f"{FIELD}.keyVaultUri", str(exc))]) from None
    problems = refusals(props, facts)
    if problems:
        raise InvalidKeyVaultProperties(problems)
    return props
