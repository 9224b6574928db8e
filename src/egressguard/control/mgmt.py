"""Run the Kusto-style callout policy commands against a cluster in the store.

Semantics (semantics §4 step 3): `.show` lists the immutable and the cluster layer;
`.alter` replaces the cluster layer, `.alter-merge` updates `CanCall` of entries with the
same type and regex and appends the rest (both refused while the cluster restricts
outbound access: then the policy changes only through the resource properties);
`.delete` empties the cluster layer and never touches the immutable one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from egressguard.control.auth import EDIT_POLICY, READ_POLICY, Principal
from egressguard.control.commands import Command, parse
from egressguard.control.errors import Forbidden, InvalidInput, Refused, problems_from
from egressguard.control.inforce import FileBook, PolicyBook
from egressguard.policy import CalloutRule, Policy
from egressguard.policy.model import KNOWN_CALLOUT_TYPES

COLUMNS = ("PolicyName", "EntityName", "Policy", "ChildEntities", "EntityType")
IMMUTABLE_ENTITY = "Cluster immutable policy"
CLUSTER_ENTITY = "Cluster"
# Allowed FQDNs cover every callout type but webapi (semantics §4 step 3).
FQDN_CALLOUT_TYPES = tuple(sorted(KNOWN_CALLOUT_TYPES - {"*", "webapi"}))
_KUSTO_NAMES = {"callout_type": "CalloutType", "uri_regex": "CalloutUriRegex",
                "can_call": "CanCall"}


@dataclass
class Result:
    """A Kusto-style result table, plus the version a write produced."""

    columns: tuple[str, ...]
    rows: list[list[Any]]
    version: int | None = None
    changed: bool = False
    notes: list[str] = field(default_factory=list)

    def as_kusto(self) -> dict[str, Any]:
        """Kusto's v1 REST shape (`Tables[0]`), plus our `version`."""
        return {"Tables": [{"TableName": "Table_0",
                            "Columns": [{"ColumnName": c, "DataType": "String"}
                                        for c in self.columns],
                            "Rows": self.rows}],
                "version": self.version, "changed": self.changed}


def fqdn_regex(pattern: str) -> str:
    """An allowed-FQDN pattern as `.show` lists it: dots escaped, no anchors."""
    body = pattern.removeprefix(".")
    return body.replace(".", r"\.").replace("*", "[^/]*")


def show_rows(policy: Policy) -> list[list[Any]]:
    immutable = [] if policy.restrict_outbound_network_access else [
        r.to_kusto() for r in policy.immutable_callouts]
    cluster = [r.to_kusto() for r in policy.callouts]
    if policy.restrict_outbound_network_access:
        cluster += [{"CalloutType": t, "CalloutUriRegex": fqdn_regex(f), "CanCall": True}
                    for f in policy.allowed_fqdn_list for t in FQDN_CALLOUT_TYPES]
    return [["CalloutPolicy", "", json.dumps(immutable), "", IMMUTABLE_ENTITY],
            ["CalloutPolicy", "", json.dumps(cluster), "", CLUSTER_ENTITY]]


def parse_callouts(command: Command) -> list[CalloutRule]:
    """The callout entries of an `.alter`/`.alter-merge` argument."""
    text = command.argument or ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput([("policy", f"not valid JSON at line {exc.lineno} column "
                                       f"{exc.colno} of the string at position "
                                       f"{command.argument_position}: {exc.msg}")]) from None
    if not isinstance(data, list):
        raise InvalidInput([("policy", "the callout policy must be a JSON array of "
                                       "{CalloutType, CalloutUriRegex, CanCall} objects")])
    rules: list[CalloutRule] = []
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            problems.append((f"policy[{i}]", "each entry must be a JSON object"))
            continue
        try:
            rules.append(CalloutRule.model_validate(entry))
        except ValidationError as exc:
            problems += problems_from(exc, f"policy[{i}]",
                                      lambda k: _KUSTO_NAMES.get(k, k))
    if problems:
        raise InvalidInput(problems)
    return rules


def merge(current: list[CalloutRule], new: list[CalloutRule]) -> list[CalloutRule]:
    """`.alter-merge`: same type and regex updates `can_call`; the rest is appended."""
    merged = list(current)
    for rule in new:
        for i, old in enumerate(merged):
            if (old.callout_type, old.uri_regex) == (rule.callout_type, rule.uri_regex):
                merged[i] = rule
                break
        else:
            merged.append(rule)
    return merged


def execute(store: PolicyBook, cluster: str, text: str, principal: Principal) -> Result:
    """Parse and run one command as `principal`; raises CommandSyntaxError, InvalidInput,
    Refused (`PolicyFromFile` for a write where a policy file is in force), Forbidden, or
    the store's NotFound."""
    command = parse(text)
    wanted = EDIT_POLICY if command.writes else READ_POLICY
    if not principal.allows(wanted, cluster):
        raise Forbidden(f"role {principal.describe()!r} may not run {command.verb} on "
                        f"cluster {cluster!r} (needs one of: admin, {', '.join(wanted)})")
    if command.writes and isinstance(store, FileBook):
        raise store.refusal()
    current = store.current(cluster)
    policy = current.policy
    if not command.writes:
        return Result(COLUMNS, show_rows(policy), current.number)
    if command.verb == ".delete":
        callouts: list[CalloutRule] = []
    else:
        if policy.restrict_outbound_network_access:
            raise Refused(f"cluster {cluster!r} restricts outbound network access: "
                          f"{command.verb} of the callout policy is refused; change it "
                          "through the resource properties (properties.allowedFqdnList, "
                          "properties.calloutPolicies)", "properties."
                          "restrictOutboundNetworkAccess")
        new = parse_callouts(command)
        callouts = new if command.verb == ".alter" else merge(list(policy.callouts), new)
    updated = policy.model_copy(update={"callouts": callouts})
    summary = text.strip() if len(text.strip()) <= 300 else text.strip()[:297] + "..."
    version = store.commit(cluster, updated, principal.name, summary)
    return Result(COLUMNS, show_rows(version.policy), version.number,
                  changed=version.number != current.number)
