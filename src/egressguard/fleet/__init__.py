"""Running many gateways as one fleet: one leader for the singleton jobs, and the
last-known-good policy cache that lets a gateway start while the store is down."""

from egressguard.fleet.leader import Job, Leader, lock_key

__all__ = ["Job", "Leader", "lock_key"]
