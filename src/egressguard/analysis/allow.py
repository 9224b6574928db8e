"""Propose allow: from a denied decision, draft the smallest policy change that would
permit it (pure: no I/O). The dashboard's "propose allow" and `egressguard explain` both
draft with it.

The draft adds one application rule for the exact host and port (never a wildcard) to an
allow collection named `COLLECTION`, created after every existing collection so that a
deny rule someone wrote still wins. The draft is then decided against the compiled new
policy: if the request would still be denied (a deny rule, a DNS or network layer), the
draft says so and cannot be applied. Only names are proposed; an IP destination needs a
network rule, which is a decision for a person, not a button.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass

from egressguard.engine import References, compile_policy
from egressguard.engine.request import build_request
from egressguard.errors import InputError
from egressguard.policy import Policy
from egressguard.policy.load import dump_policy
from egressguard.policy.model import ApplicationRule, ApplicationRuleCollection, PortSpec

COLLECTION = "dashboard-allow"  # the name predates explain; drafts from both share it
MAX_RULES = 500
_HOST = re.compile(r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*")


class CannotPropose(InputError, ValueError):
    """No allow can be drafted for this destination (message safe to show)."""


@dataclass(frozen=True)
class Target:
    """What was denied: a host name, a port and how it was asked for."""

    host: str
    port: int
    kind: str           # http (plain HTTP proxying) | connect (a CONNECT tunnel)

    @property
    def protocol(self) -> str:
        """The application-rule protocol: plain HTTP is `http`, a tunnel `https`."""
        return f"{'http' if self.kind == 'http' else 'https'}:{self.port}"

    @property
    def rule_name(self) -> str:
        return re.sub(r"[^a-z0-9-]+", "-", f"{self.host}-{self.port}").strip("-")[:80]

    def url(self) -> str:
        """The request to decide, as `egressguard check` takes it."""
        if self.kind == "http":
            return f"http://{self.host}:{self.port}/"
        return f"{self.host}:{self.port}"


def target(host: str, port: int | None, kind: str) -> Target:
    """Validate what a form or link asks to allow; `CannotPropose` if it is no name."""
    name = host.strip().lower().rstrip(".")
    if kind not in ("http", "connect"):
        raise CannotPropose(f"only HTTP and CONNECT requests can be proposed (not {kind!r})")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise CannotPropose(f"{name} is an address: allow it with a network rule (a person "
                            "should decide that)")
    if not _HOST.fullmatch(name):
        raise CannotPropose(f"{host[:80]!r} is not a host name")
    if port is None:
        port = 80 if kind == "http" else 443
    if not 0 < port < 65536:
        raise CannotPropose(f"port {port} is out of range")
    return Target(name, port, kind)


@dataclass(frozen=True)
class Draft:
    target: Target
    base: int                   # the version the draft changes
    policy: Policy
    diff: str                   # unified diff of the stored YAML
    summary: str
    permits: bool               # the draft permits the request
    verdict: str                # what the draft decides, for people

    @property
    def applicable(self) -> bool:
        return self.permits and bool(self.diff)


def _next_priority(policy: Policy) -> int:
    used = [c.priority for c in policy.application_rule_collections]
    return min(65000, max(used, default=900) + 100)


def propose(policy: Policy, base: int, base_text: str, t: Target, refs: References, *,
            origin: str = "the dashboard", base_label: str | None = None) -> Draft:
    """The new policy that allows `t`, its YAML diff against `base_text` (headed
    `base_label`, default `version BASE`), and whether it permits the request once
    compiled. `origin` says where the proposal came from, in the rule's description."""
    rule = ApplicationRule(name=t.rule_name, targets=[t.host],
                           protocols=[PortSpec.parse(t.protocol)],
                           description=f"proposed from a denial on {origin}")
    collections = list(policy.application_rule_collections)
    found = next((i for i, c in enumerate(collections) if c.name == COLLECTION), None)
    if found is None:
        collections.append(ApplicationRuleCollection(
            name=COLLECTION, priority=_next_priority(policy), rules=[rule]))
    else:
        existing = collections[found]
        if len(existing.rules) >= MAX_RULES:
            raise CannotPropose(f"collection {COLLECTION} already holds {MAX_RULES} rules: "
                                "tidy it into named collections first")
        rules = [r for r in existing.rules if r.name != rule.name] + [rule]
        collections[found] = existing.model_copy(update={"rules": rules})
    changes: dict[str, object] = {"application_rule_collections": collections}
    if not policy.restrict_outbound_network_access:
        changes = {}  # unrestricted: nothing is denied by default, nothing to add
    new = policy.model_copy(update=changes)
    new = Policy.model_validate(new.model_dump())  # re-validated as a whole
    text = dump_policy(new)
    diff = "".join(difflib.unified_diff(
        base_text.splitlines(keepends=True), text.splitlines(keepends=True),
        base_label or f"version {base}", "proposed"))
    decision = compile_policy(new, refs).decide(build_request(t.url(), kind=t.kind,
                                                              port=t.port))
    verdict = (f"{decision.verdict.value} by {decision.rule} ({decision.layer.value}): "
               f"{decision.reason}")
    return Draft(t, base, new, diff, f"allow {t.protocol} to {t.host} (proposed from a "
                 f"denial on {origin})", decision.allowed, verdict)
