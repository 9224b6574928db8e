"""The one compile entry: a policy with the catalog's references attached.

Every place that turns a `Policy` into a `Snapshot` goes through `snapshot_for`, so a
policy that names a service tag or an FQDN tag compiles the same in `check`, the
gateway, `recommend --diff` and the analyser (a compile without references rejects
what the others accept).
"""

from __future__ import annotations

from egressguard.catalog import references
from egressguard.engine import References, Snapshot, compile_policy
from egressguard.engine.holder import Active
from egressguard.policy import Policy


def snapshot_for(policy: Policy, refs: References | None = None) -> Snapshot:
    """Compile `policy` with `refs` (default: the catalog's current references).
    Raises `CompileError` for a name the references do not know."""
    return compile_policy(policy, refs if refs is not None else references())


def active_of(policy: Policy, version: str, source: str,
              refs: References | None = None) -> Active:
    """What a holder holds for `policy`, labelled with its version and origin."""
    return Active(snapshot_for(policy, refs), version, source)
