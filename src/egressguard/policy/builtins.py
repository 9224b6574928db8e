"""The two built-in policies, named so that "the default policy" is never ambiguous.

* `UNRESTRICTED`: an empty policy with outbound access not restricted: everything but
  the address guard's special destinations is allowed. The library `Guard()` with no
  source uses it (an application opting in to checks should not break on day one).
* `DENY_ALL`: outbound access restricted and no rule: every request is refused. What
  enforcement points and one-shot commands fall back to when no file and no store names
  a policy (fail closed), and what `egressguard serve`'s shipped default file says.
"""

from __future__ import annotations

from egressguard.policy.model import Policy

UNRESTRICTED = Policy(restrict_outbound_network_access=False)
DENY_ALL = Policy(restrict_outbound_network_access=True)


def fallback_name(policy: Policy) -> str:
    """How a built-in fallback is shown in logs and output."""
    if policy is DENY_ALL:
        return "built-in deny-all policy"
    if policy is UNRESTRICTED:
        return "built-in unrestricted policy"
    return "built-in policy"


__all__ = ["DENY_ALL", "UNRESTRICTED", "fallback_name"]
