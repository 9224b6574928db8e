"""Kernel enforcement of the network layer with nftables (the "L3/L4 rules" point).

`build_ruleset(policy, refs, options)` makes the intermediate `Ruleset` (pure);
`render(ruleset)` / `render_ruleset(policy, ...)` print it for `nft -f`; `evaluate` walks
it as the kernel would (the tests compare that with the engine); `nft` applies it.

Intended deployment: in each workload's network namespace (or on the forward hook of the
host that routes the workloads), while the policy is restricted the kernel drops every
flow except return traffic, the gateway and DNS filter ports, named resolvers and what
the policy's network rules allow; HTTP(S) and names go through the proxy and DNS filter,
which enforce application rules and FQDNs (L3 cannot see names).
"""

from egressguard.firewall.build import Options, build_ruleset
from egressguard.firewall.model import Action, Chain, NamedSet, NftRule, Packet, Ruleset, evaluate
from egressguard.firewall.render import render, render_ruleset

__all__ = ["Action", "Chain", "NamedSet", "NftRule", "Options", "Packet", "Ruleset",
           "build_ruleset", "evaluate", "render", "render_ruleset"]
