"""Requirement catalogs: the outbound endpoints platforms need, shipped as data.

`references()` is what the engine needs from the catalog (FQDN tags, storage aliases and
the imported service tags); it is cheap and cached on the service-tag file's mtime.
"""

from __future__ import annotations

from egressguard.engine import References


def references() -> References:
    """References for `compile_policy` (partial until the catalog data lands)."""
    return References()


__all__ = ["references"]
