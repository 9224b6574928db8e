"""The storage account inventory: the accounts egressguard knows, with their resource ids.

Service endpoint policies may list a subscription or a resource group (semantics §6); a
host name says only which account it is, so such a scope matches the accounts this
inventory places in it. An entry may also say which alias's Microsoft-managed accounts it
is (`aliases: [/services/Azure/MachineLearning]`): that is how an alias is modelled, as
the accounts listed for it, never as a name pattern (account names are global and first
come, first served, so a pattern such as `umsa*` would match accounts anyone can create).
Microsoft does not publish the accounts behind its aliases: the inventory is an
approximation that the operator keeps, and an alias with no account listed covers none.

Stored as `<EGRESSGUARD_HOME>/storage-accounts.json`, written only after validation;
`import_arm` reads an ARM resource list (`az resource list`, `az storage account list`, or
the REST API's `{"value": [...]}`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from egressguard.catalog.model import CatalogError
from egressguard.paths import data_home

FILE_NAME = "storage-accounts.json"
MAX_ACCOUNTS = 100_000
MAX_IMPORT_BYTES = 64 * 1024 * 1024
STORAGE_TYPE = "microsoft.storage/storageaccounts"
_NAME = re.compile(r"[a-z0-9]{3,24}")
_ID = re.compile(r"/subscriptions/[^/\s]{1,100}/resourcegroups/[^/\s]{1,100}/providers/"
                 r"microsoft\.storage/storageaccounts/(?P<name>[a-z0-9]{3,24})")
_cache: tuple[object, dict[str, dict[str, Any]]] | None = None


def stored_path() -> Path:
    return data_home() / FILE_NAME


def check_entry(name: str, resource_id: str, aliases: list[str], where: str
                ) -> tuple[str, dict[str, Any]]:
    """(name, entry) validated; raises `CatalogError` naming `where` and the reason."""
    name = name.strip().lower()
    if not _NAME.fullmatch(name):
        raise CatalogError(f"{where}: storage account name {name!r} must be 3-24 lower-case "
                           "letters and digits")
    rid = resource_id.strip().rstrip("/").lower()
    found = _ID.fullmatch(rid)
    if found is None:
        raise CatalogError(f"{where}: resource id {resource_id!r} is not /subscriptions/S/"
                           "resourceGroups/G/providers/Microsoft.Storage/storageAccounts/N")
    if found.group("name") != name:
        raise CatalogError(f"{where}: resource id names account {found.group('name')!r}, "
                           f"not {name!r}")
    for alias in aliases:
        if not isinstance(alias, str) or not alias.startswith("/services/"):
            raise CatalogError(f"{where}: alias {alias!r} must start with /services/")
    return name, {"id": rid, "aliases": sorted(set(aliases))}


def load() -> dict[str, dict[str, Any]]:
    """Account name -> {"id", "aliases"} (empty when nothing was added); cached on mtime."""
    global _cache
    path = stored_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        accounts = dict(check_entry(n, e["id"], list(e.get("aliases", [])), str(path))
                        for n, e in data["accounts"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CatalogError(f"{path}: unreadable storage account inventory: {exc}",
                           hint="re-import it with `egressguard storage-accounts import`"
                           ) from None
    _cache = (key, accounts)
    return accounts


def resource_ids() -> dict[str, str]:
    """Account name -> resource id, for `References.storage_accounts`."""
    return {name: entry["id"] for name, entry in load().items()}


def alias_accounts() -> dict[str, list[str]]:
    """Alias -> the account names listed for it."""
    out: dict[str, list[str]] = {}
    for name, entry in sorted(load().items()):
        for alias in entry["aliases"]:
            out.setdefault(alias, []).append(name)
    return out


def save(accounts: dict[str, dict[str, Any]]) -> Path:
    """Write the inventory atomically (readers never see half a file)."""
    if len(accounts) > MAX_ACCOUNTS:
        raise CatalogError(f"at most {MAX_ACCOUNTS} storage accounts")
    path = stored_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".storage-accounts.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"accounts": dict(sorted(accounts.items()))}, out, indent=1)
    os.replace(tmp, path)
    return path


def parse_arm(text: str, where: str, aliases: list[str]) -> dict[str, dict[str, Any]]:
    """The storage accounts of an ARM resource list (other resource types are skipped)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{where}: line {exc.lineno}: not JSON: {exc.msg}") from None
    items = data.get("value") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CatalogError(f"{where}: expected a JSON array of resources or "
                           "{\"value\": [...]}")
    found: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or str(item.get("type", "")).lower() != STORAGE_TYPE:
            continue
        if not isinstance(item.get("id"), str) or not isinstance(item.get("name"), str):
            raise CatalogError(f"{where}: resource [{i}]: a storage account needs string "
                               "id and name")
        name, entry = check_entry(item["name"], item["id"], aliases,
                                  f"{where}: resource [{i}]")
        found[name] = entry
    return found


def import_arm(path: Path, aliases: list[str]) -> tuple[int, Path]:
    """Merge the storage accounts of the ARM resource list at `path` into the inventory;
    (accounts imported, the inventory file)."""
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise CatalogError(f"{path}: larger than {MAX_IMPORT_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: {exc.strerror or exc}") from None
    found = parse_arm(text, str(path), aliases)
    accounts = dict(load())
    for name, entry in found.items():
        kept = accounts.get(name, {}).get("aliases", [])
        accounts[name] = {**entry, "aliases": sorted({*kept, *entry["aliases"]})}
    return len(found), save(accounts)


def add(name: str, resource_id: str, aliases: list[str]) -> Path:
    key, entry = check_entry(name, resource_id, aliases, "storage-accounts add")
    return save({**load(), key: entry})


def remove(name: str) -> Path:
    accounts = dict(load())
    if accounts.pop(name.strip().lower(), None) is None:
        raise CatalogError(f"no storage account {name!r} in the inventory",
                           hint="`egressguard storage-accounts list` shows them")
    return save(accounts)
