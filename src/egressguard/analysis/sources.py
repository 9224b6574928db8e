"""Where the analyser and the what-if get policies: a file, a stored cluster, or the
shipped default. The only module of `analysis` that does I/O."""

from __future__ import annotations

import os
from pathlib import Path

from egressguard.errors import InputError
from egressguard.policy import Policy, PolicyError, load_policy


class SourceError(InputError, ValueError):
    """A policy source that cannot be read (missing file, unknown cluster, bad store)."""


def from_file(path: Path) -> tuple[Policy, str]:
    try:
        return load_policy(path), str(path)
    except PolicyError as exc:
        raise SourceError(str(exc)) from None


def from_cluster(name: str, store_url: str | None = None) -> tuple[Policy, str]:
    """The current version of a stored cluster."""
    from egressguard.store import StoreError, StoreURLError, open_store

    try:
        store = open_store(store_url or os.environ.get("EGRESSGUARD_STORE") or None)
    except (StoreURLError, StoreError) as exc:
        raise SourceError(f"cannot open the store: {exc}") from None
    try:
        version = store.current(name)
    except StoreError as exc:
        raise SourceError(f"cluster {name!r}: {exc}") from None
    finally:
        store.close()
    return version.policy, f"cluster {name} version {version.number}"


def store_available(store_url: str | None) -> bool:
    """A store was named or configured, or the embedded one exists (it is never created
    just to read)."""
    from egressguard import config

    settings = config.current()
    if store_url or not settings.store.source.startswith("home"):
        return True
    assert settings.home.value is not None
    return (Path(settings.home.value) / config.STORE_FILE).is_file()


def in_force(current: Path | None, cluster: str | None,
             store_url: str | None = None) -> tuple[Policy, str]:
    """The policy a change would replace: `--current FILE`, else `--cluster N`, else the
    configured cluster (`egressguard config show`) when a store exists, else the shipped
    default policy."""
    if current is not None:
        return from_file(current)
    if cluster is not None:
        return from_cluster(cluster, store_url)
    if store_available(store_url):
        from egressguard import config

        return from_cluster(config.cluster(), store_url)
    from egressguard.store import default_policy

    return default_policy(), "default policy"
