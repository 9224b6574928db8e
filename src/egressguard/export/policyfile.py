"""Policy -> the policy-file form (YAML), lossless: `load_policy_text` of the output gives
an equal `Policy` (the pair `export --format yaml` / `apply -f` relies on). The
serialisation is `policy.load.dump_policy`, the one the store and the API use."""

from __future__ import annotations

from egressguard.engine import References
from egressguard.export.base import Export, header
from egressguard.policy import Policy, dump_policy


def export_yaml(policy: Policy, refs: References | None = None, source: str = "") -> Export:
    del refs  # the file keeps FQDN and service tags by name
    return Export("yaml", header("#", "yaml", source, ()) + dump_policy(policy), ())
