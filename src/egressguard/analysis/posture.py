"""Policy-wide findings, decided by asking the compiled engine about probe requests.

Where a question is "can an attacker-named destination get through?", the analyser asks
the engine itself (`Snapshot.decide`) with a probe such as
`https://exfil0probe.blob.core.windows.net/`, so the answer follows the real evaluation
order, service endpoint policies and callout layers rather than a re-implementation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

import re2

from egressguard.analysis.exposure import STORAGE_ZONES
from egressguard.analysis.findings import AML_GUIDE, Finding, Severity
from egressguard.analysis.inventory import AppRule, Grant, NetRule
from egressguard.analysis.patterns import PROBE_LABEL
from egressguard.engine import Decision, Kind, Layer, References, Request, Snapshot
from egressguard.policy.model import KNOWN_CALLOUT_TYPES, Action, Policy

_STORAGE_NAME = re.compile(r"[a-z0-9]{3,24}\.(?:blob|queue|table|file|dfs|web)\.core\.\S+")
ATTACKER_URL = f"https://{PROBE_LABEL}.example/"
STORAGE_URL = f"https://{PROBE_LABEL}.blob.core.windows.net/"
FRONT_DOOR_URL = f"https://{PROBE_LABEL}.azurefd.net/"
CALLOUT_TYPES = tuple(sorted(KNOWN_CALLOUT_TYPES - {"*"}))


def unrestricted(policy: Policy, snapshot: Snapshot, grants: list[Grant]) -> list[Finding]:
    if policy.restrict_outbound_network_access:
        return []
    decision = snapshot.decide(Request.from_url(ATTACKER_URL))
    if not decision.allowed or decision.layer is not Layer.DEFAULT:
        return []
    intent = [g.rule_id for g in grants] + [
        f"cluster[{i}]" for i, c in enumerate(policy.callouts) if c.can_call]
    fix = ("Set `restrict_outbound_network_access: Enabled`; keep the allow rules and list "
           "callout destinations in `allowed_fqdn_list` or cluster callout entries.")
    if intent:
        return [Finding(
            "unrestricted-with-allow-rules", Severity.HIGH, "policy",
            "restrict_outbound_network_access",
            "allow rules are written but outbound access is not restricted",
            "The policy lists allowed destinations, which suggests the intent to allow only "
            "those, yet the default verdict is allow (semantics §4, step 7): every other "
            "destination is reachable too, and the allowed FQDN list is ignored.",
            fix, example=f"{PROBE_LABEL}.example", related=tuple(dict.fromkeys(intent)))]
    return [Finding(
        "unrestricted-egress", Severity.HIGH, "policy", "restrict_outbound_network_access",
        "outbound network access is not restricted",
        "The default verdict is allow: every destination, including an attacker's own "
        "storage account, is reachable.", fix, example=f"{PROBE_LABEL}.example")]


def immutable_callouts(policy: Policy, snapshot: Snapshot) -> list[Finding]:
    """The immutable callout layer (Azure Data Explorer's defaults) takes part while
    access is unrestricted."""
    if policy.restrict_outbound_network_access:
        return []
    out = []
    for index, rule in enumerate(policy.immutable_callouts):
        if not rule.can_call:
            continue
        probe = snapshot.decide(Request.from_url(ATTACKER_URL, kind=Kind.CALLOUT,
                                                 callout_type=rule.callout_type))
        if probe.allowed and probe.rule == f"immutable[{index}]":
            out.append(Finding(
                "immutable-callouts-active", Severity.HIGH, f"immutable[{index}]",
                f"{rule.callout_type}: {rule.uri_regex}",
                f"immutable default lets {rule.callout_type} call any URI",
                f"The built-in entry ({rule.callout_type}, {rule.uri_regex!r}, can_call true) "
                "is active while access is unrestricted: a query can send data to any "
                "URI, e.g. an attacker's storage account.",
                "Set `restrict_outbound_network_access: Enabled`, which drops the immutable "
                "layer, and allow the needed destinations in `allowed_fqdn_list`.",
                example=ATTACKER_URL))
    rest = [f"immutable[{i}]" for i, r in enumerate(policy.immutable_callouts)
            if r.can_call and not any(f.rule == f"immutable[{i}]" for f in out)]
    if rest:
        out.append(Finding(
            "immutable-callouts-active", Severity.MEDIUM, "immutable",
            "kusto, sql, azure_digital_twins defaults",
            "immutable defaults allow callouts to any tenant's SQL, Kusto and Digital Twins",
            "The remaining built-in entries match any server name under the service's zone "
            "(e.g. attacker.database.windows.net), which an attacker can create and write to.",
            "Set `restrict_outbound_network_access: Enabled` and list your own servers.",
            example="https://exfil0probe.database.windows.net", related=tuple(rest)))
    return out


def callout_probes(policy: Policy, snapshot: Snapshot, has_sep: bool) -> list[Finding]:
    """Cluster callout entries and allowed FQDN entries that let a callout reach an
    attacker's host, storage account or front door (checked by the engine)."""
    probes = (("callout-unrestricted", ATTACKER_URL, Severity.HIGH,
               "callouts can reach any host"),
              ("wildcard-storage", STORAGE_URL, Severity.HIGH,
               "callouts can reach any storage account"),
              ("shared-front-door", FRONT_DOOR_URL, Severity.HIGH,
               "callouts can reach any front door endpoint"))
    by_rule: dict[tuple[str, str], list[str]] = {}
    for check, url, _, _ in probes:
        for callout_type in CALLOUT_TYPES:
            decision = snapshot.decide(Request.from_url(url, kind=Kind.CALLOUT,
                                                        callout_type=callout_type))
            if decision.allowed and decision.layer is not Layer.IMMUTABLE:
                by_rule.setdefault((check, decision.rule), []).append(callout_type)
    out = []
    reported: set[str] = set()
    for check, url, severity, title in probes:
        for (found, rule), types in by_rule.items():
            if found != check or rule in reported:
                continue
            reported.add(rule)  # the broadest probe a rule fails is the one reported
            target = _callout_target(policy, rule)
            out.append(Finding(
                check, severity, rule, target, f"{title} ({', '.join(types)})",
                f"The engine allows a {types[0]} callout to {url}, a destination an attacker "
                "can create; queries can then write data there."
                + (" Service endpoint policies are not applied to callouts." if has_sep
                   and check == "wildcard-storage" else ""),
                "Anchor the callout regex to your own servers, e.g. "
                r"`^https://myserver\.database\.windows\.net/?$`, or name them in "
                "`allowed_fqdn_list`.", example=url))
    return out


def _callout_target(policy: Policy, rule: str) -> str:
    if rule.startswith("cluster["):
        entry = policy.callouts[int(rule[8:-1])]
        return f"{entry.callout_type}: {entry.uri_regex}"
    return rule.partition(":")[2]


_HOST_LITERAL = re.compile(r"(?:[a-z0-9-]+\\\.)+[a-z0-9-]+")


def unanchored_callouts(policy: Policy) -> list[Finding]:
    """Cluster entries whose regex also matches hosts that merely contain the name.

    Callout regexes are searched, not matched (semantics §3), in `scheme://host/path`:
    `myserver\\.database\\.windows\\.net` also matches
    `https://myserver.database.windows.net.attacker.example/` and
    `https://attacker.example/myserver.database.windows.net`.
    """
    out = []
    for index, entry in enumerate(policy.callouts):
        if not entry.can_call:
            continue
        compiled = re2.compile(entry.uri_regex)
        if compiled.search(ATTACKER_URL):
            continue  # reported as callout-unrestricted
        literal = _HOST_LITERAL.search(entry.uri_regex.lower())
        witness = ""
        if literal:
            name = literal.group(0).replace("\\.", ".")
            for probe in (f"https://{name}.{PROBE_LABEL}.example/",
                          f"https://{PROBE_LABEL}.example/{name}",
                          f"https://{PROBE_LABEL}{name}/"):
                if compiled.search(probe):
                    witness = probe
                    break
            if not witness:
                continue
        elif entry.uri_regex.startswith("^"):
            continue
        out.append(Finding(
            "callout-unanchored", Severity.MEDIUM if witness else Severity.LOW,
            f"cluster[{index}]", f"{entry.callout_type}: {entry.uri_regex}",
            "callout regex is not anchored to the host",
            "Callout regexes are searched anywhere in `scheme://host[:port]/path` "
            "(as .NET Regex.IsMatch): an attacker host that merely contains the text, or a "
            "path that ends with it, also matches"
            + (f", e.g. {witness}" if witness else "") + ".",
            r"Anchor both ends: `^https://myserver\.database\.windows\.net(:\d+)?/?$`.",
            example=witness))
    return out


def storage_without_sep(policy: Policy, snapshot: Snapshot, grants: list[Grant],
                        refs: References, callers: Sequence[str | None] = (None,)
                        ) -> list[Finding]:
    """Storage reachable while no service endpoint policy limits the accounts, by any
    of `callers` (one identity per class the rules' scopes make, `inventory.callers`)."""
    reachable = next((found for who in callers if (found := _storage_probe(
        snapshot, refs, flows=not policy.service_endpoint_policies, identity=who))
        is not None), None)
    if policy.service_endpoint_policies:
        if reachable is None:
            return []
        return [Finding(
            "sep-ineffective", Severity.HIGH, reachable.rule, "service_endpoint_policies",
            "the service endpoint policy does not stop an unlisted storage account",
            f"An account nobody listed ({reachable.destination}) is allowed "
            f"({reachable.reason}); an alias or resource entry covers every account.",
            "List single accounts and the /services/Azure/MachineLearning alias; do not use "
            "aliases or subscriptions that cover all accounts.",
            example=reachable.destination)]
    named = sorted({g.pattern for g in grants if _STORAGE_NAME.fullmatch(g.pattern)})
    if reachable is not None:
        return [Finding(
            "storage-without-sep", Severity.HIGH, reachable.rule, "service_endpoint_policies",
            "storage is reachable and no service endpoint policy limits the accounts",
            f"An attacker's account ({reachable.destination}) is allowed "
            f"({reachable.reason}): {AML_GUIDE} warns, 'a malicious agent can use this "
            "outbound rule "
            "to exfiltrate data by provisioning and saving data in their own storage "
            "account'.",
            "Add a service endpoint policy (service Microsoft.Storage) listing your "
            "accounts and the /services/Azure/MachineLearning alias.",
            example=reachable.destination)]
    if named:
        return [Finding(
            "storage-without-sep", Severity.LOW, "policy", ", ".join(named),
            "storage accounts allowed by name without a service endpoint policy",
            "Only named accounts are reachable today, but nothing pins storage egress to "
            "them: the next broad rule (or Storage tag) silently opens every account.",
            f"Add a service endpoint policy listing these accounts, as {AML_GUIDE} "
            "prescribes.",
            related=tuple(named))]
    return []


def _storage_probe(snapshot: Snapshot, refs: References, flows: bool = False,
                   identity: str | None = None) -> Decision | None:
    """An allowed request to an attacker's storage account: by name, else (with `flows`)
    by address into a Storage tag, which network rules decide without the name."""
    addresses: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]] = [()]
    for tag, prefixes in refs.service_tags.items():
        if tag.lower().partition(".")[0] == "storage" and prefixes:
            net = ipaddress.ip_network(prefixes[0], strict=False)
            addresses.append((net[1] if net.num_addresses > 2 else net[0],))
    for zone in STORAGE_ZONES:
        for addr in addresses:
            for kind in (Kind.HTTP, Kind.CONNECT):
                host = f"{PROBE_LABEL}.{zone}"
                request = (Request.from_url(f"https://{host}/", addresses=addr,
                                            identity=identity)
                           if kind is Kind.HTTP else
                           Request(kind=kind, host=host, port=443, addresses=addr,
                                   identity=identity))
                decision = snapshot.decide(request)
                if decision.allowed:
                    return decision
    for addr in addresses[1:] if flows else ():
        decision = snapshot.decide(Request(kind=Kind.FLOW, host=str(addr[0]), port=443,
                                           protocol="tcp", addresses=addr,
                                           identity=identity))
        if decision.allowed:
            return decision
    return None


def report_only(policy: Policy, apps: list[AppRule], nets: list[NetRule]) -> list[Finding]:
    if policy.report_only:
        return [Finding(
            "report-only", Severity.HIGH, "policy", "report_only",
            "the whole policy is in report-only mode",
            "Every denial is only recorded and the call proceeds: nothing is enforced.",
            "Turn report_only off once the recorded denials have been reviewed.")]
    seen: dict[str, None] = {}
    for rule_id, action, flagged in [(r.rule_id, r.action, r.report_only) for r in apps] + [
            (r.rule_id, r.action, r.report_only) for r in nets]:
        if flagged and action is Action.DENY:
            seen[rule_id.rpartition("/")[0]] = None
    return [Finding(
        "report-only", Severity.MEDIUM, collection, "report_only",
        "deny rules in a report-only collection are not enforced",
        "Calls these deny rules match proceed; the denial is only recorded.",
        "Turn report_only off for the collection once its denials have been reviewed.")
        for collection in seen]


_WEB_PORTS = frozenset({80, 443})


def fqdn_ports(grants: Iterable[Grant]) -> list[Finding]:
    """FQDN targets on ports other than 80/443: raw tunnels the gateway cannot inspect."""
    out = []
    for grant in grants:
        if grant.pattern == "*" or grant.pattern[:1].isdigit() or ":" in grant.pattern:
            continue  # `*` is reported as any-host; an IP literal is not a name
        odd = [p for p in grant.ports if p is None or p not in _WEB_PORTS]
        if not odd:
            continue
        severity = (Severity.HIGH if None in odd else Severity.LOW if odd == [1433]
                    else Severity.MEDIUM)
        shown = ", ".join("*" if p is None else str(p) for p in odd)
        out.append(Finding(
            "fqdn-nonstandard-port", severity, grant.rule_id, grant.pattern,
            f"name allowed on port {shown}",
            "Beyond 80/443 the connection is an opaque tunnel: no HTTP request to check, "
            "often no TLS SNI to compare with the name, so any protocol (SSH, a custom "
            "uploader) can be carried to a host that merely resolves from this name.",
            "Allow only ports 80/443 to names; put other ports in network rules naming the "
            "server's address, or `mssql:1433` for SQL.", example=f"{grant.pattern}:{shown}"))
    return out

