"""Moved to `egressguard.policy.builtins` (below the store, whose new clusters start there)."""

from egressguard.policy.builtins import DENY_ALL, UNRESTRICTED, fallback_name

__all__ = ["DENY_ALL", "UNRESTRICTED", "fallback_name"]
