"""The policy model: what an operator writes, validated, with no matching logic."""

from egressguard.policy.load import (
    PolicyError,
    dump_policy,
    dump_policy_json,
    load_policy,
    load_policy_text,
)
from egressguard.policy.model import (
    Action,
    ApplicationRule,
    ApplicationRuleCollection,
    CalloutRule,
    NetworkRule,
    NetworkRuleCollection,
    Policy,
    ServiceEndpointPolicy,
)

__all__ = [
    "Action",
    "ApplicationRule",
    "ApplicationRuleCollection",
    "CalloutRule",
    "NetworkRule",
    "NetworkRuleCollection",
    "Policy",
    "PolicyError",
    "ServiceEndpointPolicy",
    "dump_policy",
    "dump_policy_json",
    "load_policy",
    "load_policy_text",
]
