"""Requirement catalogs: the outbound endpoints platforms need, shipped as data.

The YAML files in `data/` are transcriptions of the seeds (AKS: 003, Azure ML: 004, Data
Explorer: 000, IoT Hub: 001); `profile` turns them into policies. `references()` is what the
engine needs from here: FQDN tags, storage aliases and the imported service tags. It is
cheap (cached; re-read only when a file it depends on changes) because every check and
every policy compile calls it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from egressguard.catalog import accounts
from egressguard.catalog.model import (
    CatalogError,
    catalogs,
    get_catalog,
    regions,
    shipped_storage_aliases,
)
from egressguard.catalog.profile import fill_region, has_region_placeholder
from egressguard.catalog.servicetags import ServiceTagError, load_stored
from egressguard.engine import References
from egressguard.paths import data_home

ALIASES_FILE = "storage-aliases.yaml"


@functools.cache
def fqdn_tags() -> dict[str, tuple[str, ...]]:
    """FQDN tag -> host patterns, from the catalogs' `fqdn_tags` (regions expanded)."""
    out: dict[str, tuple[str, ...]] = {}
    for catalog in catalogs().values():
        for tag, spec in catalog.fqdn_tags.items():
            cloud = spec["cloud"]
            patterns: list[str] = []
            for section_id in spec["sections"]:
                for row in catalog.section(section_id).rows:
                    for host in row.targets_for(cloud):
                        expanded = ([fill_region(host, r) for r in regions()[cloud]]
                                    if has_region_placeholder(host) else [host])
                        patterns.extend(p for p in expanded if p not in patterns)
            out[tag] = tuple(patterns)
    return out


def _alias_globs(table: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Resolve `includes` so that a broad alias covers its narrower ones."""
    def globs(alias: str, seen: frozenset[str]) -> list[str]:
        entry = table.get(alias) or {}
        found = list(entry.get("globs") or [])
        for inner in entry.get("includes") or []:
            if inner not in seen:
                found += [g for g in globs(inner, seen | {inner}) if g not in found]
        return found
    return {alias: tuple(globs(alias, frozenset({alias}))) for alias in table}


_alias_cache: tuple[object, dict[str, tuple[str, ...]]] | None = None


def storage_aliases() -> dict[str, tuple[str, ...]]:
    """Alias -> account-name globs: the shipped table merged with
    `<EGRESSGUARD_HOME>/storage-aliases.yaml` (operator additions) and the accounts the
    inventory lists for each alias (`catalog.accounts`), cached on both files' mtimes."""
    global _alias_cache
    path = data_home() / ALIASES_FILE
    stamp = _stamp(path)
    key = (stamp, _stamp(accounts.stored_path()))
    if _alias_cache is not None and _alias_cache[0] == key:
        return _alias_cache[1]
    table = {alias: dict(entry) for alias, entry in shipped_storage_aliases().items()}
    if stamp is not None:
        for alias, entry in _read_user_aliases(path).items():
            merged = table.setdefault(alias, {})
            merged["globs"] = list(merged.get("globs") or []) + list(entry.get("globs") or [])
            merged["includes"] = (list(merged.get("includes") or [])
                                  + list(entry.get("includes") or []))
    # The inventory's accounts listed for an alias (exact names: no glob characters).
    listed = accounts.alias_accounts()
    for alias, names in listed.items():
        merged = table.setdefault(alias, {})
        merged["globs"] = list(merged.get("globs") or []) + names
    result = _alias_globs(table)
    _alias_cache = (key, result)
    return result


def _stamp(path: Path) -> object:
    """What identifies a file's content cheaply (None when it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _read_user_aliases(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read storage aliases: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and k.startswith("/services/") and isinstance(v, dict)
            and all(isinstance(g, str) for g in v.get("globs") or [])
            for k, v in data.items()):
        raise CatalogError(f"{path}: expected a mapping of /services/... aliases to "
                           "{globs: [account-name globs], includes: [aliases]}")
    return data


def references() -> References:
    """Everything a policy may name, for `compile_policy` (cheap: cached on file mtimes)."""
    return References(service_tags=load_stored(), fqdn_tags=fqdn_tags(),
                      storage_aliases=storage_aliases(),
                      storage_accounts=accounts.resource_ids())


__all__ = [
    "CatalogError",
    "ServiceTagError",
    "catalogs",
    "fqdn_tags",
    "get_catalog",
    "references",
    "regions",
    "storage_aliases",
]
