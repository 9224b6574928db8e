"""Destinations an attacker can hold write access to (the central point of
Azure ML's 'Configure data exfiltration prevention').

"If malicious agents don't have write access to outbound destination resources, they
can't use that outbound for data exfiltration ... Storage and AzureFrontDoor.frontend can
be used for data exfiltration." A rule is an exfiltration path when it matches a name the
attacker can create for themselves: their own storage account under
`*.blob.core.windows.net`, their own front door endpoint under `*.azurefd.net`, their own
SQL server under `*.database.windows.net`. The fix is always to name the resources.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from egressguard.analysis.findings import AML_GUIDE, Finding, Severity
from egressguard.analysis.inventory import Grant, NetRule
from egressguard.analysis.patterns import attacker_host, matches
from egressguard.engine import Kind, Request, Snapshot
from egressguard.engine.guard import SPECIAL_RANGES
from egressguard.engine.normalize import IPAddress
from egressguard.policy.model import Action, Policy

STORAGE_SERVICES = ("blob", "queue", "table", "file", "dfs", "web")
STORAGE_CLOUDS = ("windows.net", "chinacloudapi.cn", "usgovcloudapi.net", "cloudapi.de")
STORAGE_ZONES = tuple(f"{s}.core.{c}" for c in STORAGE_CLOUDS for s in STORAGE_SERVICES)
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

FRONT_DOOR_ZONES = ("azurefd.net", "z01.azurefd.net", "azureedge.net", "azurefd.us",
                    "azureedge.us", "azurefd.cn", "cloudfront.net")

# Shared zones where anyone can create a resource named by one label and write to it.
MULTI_TENANT_ZONES: dict[str, str] = {
    "database.windows.net": "Azure SQL servers",
    "servicebus.windows.net": "Event Hubs and Service Bus namespaces",
    "azurewebsites.net": "App Service apps",
    "azurecr.io": "container registries (anyone can push an image)",
    "documents.azure.com": "Cosmos DB accounts",
    "vault.azure.net": "Key Vaults",
    "azure-devices.net": "IoT hubs",
    "trafficmanager.net": "Traffic Manager profiles",
    "azurestaticapps.net": "Static Web Apps",
    "azure-api.net": "API Management services",
    "search.windows.net": "Cognitive Search services",
    "redis.cache.windows.net": "Redis caches",
    "s3.amazonaws.com": "S3 buckets",
    "blob.storage.azure.net": "storage accounts (DNS zone endpoints)",
}

CURATED_REGISTRY = "viennaglobal.azurecr.io"

BROAD_TAGS = ("azurecloud", "internet")
MULTI_TENANT_TAGS = ("sql", "eventhub", "servicebus", "azurecosmosdb", "appservice",
                     "azurecontainerregistry", "azurekeyvault", "azureiothub")
FRONT_DOOR_TAGS = ("azurefrontdoor.frontend",)
METADATA = ipaddress.ip_address("169.254.169.254")
_ANY_V4 = ipaddress.ip_network("0.0.0.0/0")
_ANY_V6 = ipaddress.ip_network("::/0")


def _tag_family(tag: str) -> str:
    return tag.lower().partition(".")[0]


def _account_ok(label: str) -> bool:
    return bool(_ACCOUNT.fullmatch(label))


def _label_ok(label: str) -> bool:
    return bool(_LABEL.fullmatch(label))


@dataclass(frozen=True)
class Context:
    policy: Policy
    has_sep: bool


def _first_exposure(pattern: str, zones: tuple[str, ...],
                    label_ok: Callable[[str], bool]) -> str | None:
    for zone in zones:
        host = attacker_host(pattern, zone, label_ok)
        if host is not None:
            return host
    return None


def grant_findings(grants: list[Grant], ctx: Context) -> list[Finding]:
    """Findings for allowed host patterns, from application rules, the allowed FQDN list
    and network rules with FQDN destinations."""
    out: list[Finding] = []
    for grant in grants:
        if grant.pattern == "*":
            out.append(Finding(
                "any-host", Severity.CRITICAL, grant.rule_id, grant.pattern,
                "rule allows every host name",
                "`*` matches every destination, including storage accounts, front doors and "
                "servers the attacker owns: anything readable can be sent anywhere.",
                "Replace `*` with the exact names the workload needs.",
                example="exfil0probe.example"))
            continue
        out.extend(_storage(grant, ctx))
        out.extend(_front_door(grant))
        out.extend(_multi_tenant(grant))
        if matches(grant.pattern, CURATED_REGISTRY):
            out.append(Finding(
                "curated-registry", Severity.MEDIUM, grant.rule_id, grant.pattern,
                f"outbound allowed to the legacy curated-environment registry "
                f"{CURATED_REGISTRY}",
                f"Per {AML_GUIDE}: curated environments whose "
                "registry is viennaglobal.azurecr.io "
                "cannot be used with data exfiltration prevention; only environments from "
                "mcr.microsoft.com are covered, so this opening exists for an image source "
                "the prevention setup does not vouch for.",
                "Upgrade to the latest curated environment version (registry "
                "mcr.microsoft.com), allow `mcr.microsoft.com` and `*.data.mcr.microsoft.com`"
                f" and remove {CURATED_REGISTRY}.", example=CURATED_REGISTRY))
    return out


def _storage(grant: Grant, ctx: Context) -> list[Finding]:
    host = _first_exposure(grant.pattern, STORAGE_ZONES, _account_ok)
    if host is None:
        return []
    # The engine applies service endpoint policies to every named request, callouts and
    # allowed-FQDN entries included, so a SEP mitigates every layer's storage wildcard.
    mitigated = ctx.has_sep
    severity = Severity.INFO if mitigated else Severity.HIGH
    why = ("The pattern matches storage accounts anyone can create: an attacker provisions "
           f"their own account (e.g. {host}) and writes your data into it.")
    if mitigated:
        why += (" The cluster's service endpoint policy limits these hosts to the listed "
                f"accounts, so the wildcard is the form {AML_GUIDE} "
                "prescribes.")
    return [Finding(
        "wildcard-storage", severity, grant.rule_id, grant.pattern,
        "wildcard storage destination" + (" (limited by a service endpoint policy)"
                                          if mitigated else ""),
        why,
        "List the storage accounts by name, or keep the wildcard and add a service endpoint "
        "policy (service Microsoft.Storage) naming the accounts and aliases such as "
        "/services/Azure/MachineLearning.", example=host)]


def _front_door(grant: Grant) -> list[Finding]:
    host = _first_exposure(grant.pattern, FRONT_DOOR_ZONES, _label_ok)
    if host is None:
        return []
    return [Finding(
        "shared-front-door", Severity.HIGH, grant.rule_id, grant.pattern,
        "wildcard on a shared front door / CDN zone",
        "Front door and CDN endpoints are shared: anyone can create an endpoint "
        f"(e.g. {host}) that forwards to an origin they own, so the wildcard reaches "
        f"attacker infrastructure ({AML_GUIDE}: AzureFrontDoor.frontend can be used "
        "for "
        "data exfiltration).",
        "Allow only the endpoints the workload uses, e.g. `ml.azure.com` and "
        "`automlresources-prod.azureedge.net` for Azure Machine Learning studio and AutoML.",
        example=host)]


def _multi_tenant(grant: Grant) -> list[Finding]:
    for zone, what in MULTI_TENANT_ZONES.items():
        if zone in STORAGE_ZONES:
            continue
        host = attacker_host(grant.pattern, zone, _label_ok)
        if host is not None:
            return [Finding(
                "multi-tenant-wildcard", Severity.MEDIUM, grant.rule_id, grant.pattern,
                f"wildcard on a multi-tenant zone ({what})",
                f"Anyone can create {what} under {zone}; the wildcard reaches an attacker's "
                f"own resource (e.g. {host}), which they can write to.",
                f"Name the {what.split(' (')[0]} the workload uses instead of `*.{zone}`.",
                example=host)]
    return []


def network_findings(rules: list[NetRule], ctx: Context, snapshot: Snapshot) -> list[Finding]:
    """Findings for network allow rules: `*`, huge CIDRs, broad or shared service tags and
    explicit CIDRs that lift the address guard."""
    out: list[Finding] = []
    for rule in rules:
        if rule.action is not Action.ALLOW or rule.nobody:
            continue
        wide_open = rule.all_ports and "any" in rule.protocols
        for dest in rule.destinations:
            if dest.kind == "any" or (dest.kind == "net" and dest.network in (_ANY_V4,
                                                                             _ANY_V6)):
                out.append(Finding(
                    "network-any", Severity.CRITICAL if wide_open else Severity.HIGH,
                    rule.rule_id, dest.text,
                    "network rule allows every destination"
                    + (" on every port and protocol" if wide_open else ""),
                    ("A network allow that opts in to names is decided before application "
                     "rules (semantics §4, step 5): once the gateway resolves a name, "
                     "this rule allows it, so no application rule or deny below it is ever "
                     "reached, and raw" if rule.names else
                     "Every IP literal and raw") + " TCP/UDP tunnels (SSH, "
                    "DNS-over-anything) go anywhere.",
                    "Replace `*` with the service tags or CIDRs the workload needs, on the "
                    "ports it needs; express web destinations as application rules.",
                    example="203.0.113.7:22"))
            elif dest.kind == "net":
                out.extend(_guard_lifted(rule, dest.text, snapshot))
                if dest.network.prefixlen < (8 if dest.network.version == 4 else 16):
                    out.append(Finding(
                        "broad-cidr", Severity.MEDIUM, rule.rule_id, dest.text,
                        "network rule allows a very large address range",
                        "A range this large holds addresses anyone can rent (cloud VMs), "
                        "so it is an open path in all but name.",
                        "Narrow the CIDR to the hosts the workload talks to."))
            elif dest.kind == "tag":
                out.extend(_tag(rule, dest.text, ctx))
    return out


def _guard_lifted(rule: NetRule, cidr: str, snapshot: Snapshot) -> list[Finding]:
    """Special-purpose addresses this rule really lets through (asked of the engine: an
    earlier `*` or deny rule decides first and keeps the guard in place)."""
    net = ipaddress.ip_network(cidr, strict=False)
    reached: dict[str, IPAddress] = {}
    for prefix, label in SPECIAL_RANGES.items():
        special = ipaddress.ip_network(prefix)
        if special.version != net.version or not net.overlaps(special):
            continue
        inner = net if net.prefixlen >= special.prefixlen else special
        probe = (METADATA if net.version == 4 and METADATA in inner
                 else inner[1] if inner.num_addresses > 2 else inner[0])
        protocol = next(iter(sorted(rule.protocols - {"any"})), "tcp")
        decision = snapshot.decide(Request(  # as a caller the rule applies to
            kind=Kind.FLOW, host=str(probe), port=rule.ports[0][0] or 443,
            protocol=protocol, identity=min(rule.identities, default=None)))
        if decision.allowed and decision.rule == rule.rule_id:
            reached.setdefault(label, probe)
    if not reached:
        return []
    labels = sorted(reached)
    if METADATA in reached.values():
        severity, what = Severity.CRITICAL, "the cloud metadata endpoint 169.254.169.254"
    elif {"loopback", "link-local"} & set(labels):
        severity, what = Severity.MEDIUM, "loopback or link-local addresses"
    else:
        severity, what = Severity.LOW, f"{', '.join(labels)} addresses"
    return [Finding(
        "guard-lifted", severity, rule.rule_id, cidr,
        f"explicit network rule opens {what}",
        "Naming a special-purpose CIDR lifts the address guard (semantics §4, step 2) "
        "for every name that resolves into it, so DNS rebinding and server-side request "
        "forgery can reach it" + (" and read instance credentials" if severity
                                  is Severity.CRITICAL else "") + ".",
        "Name only the exact internal hosts (/32) the workload needs; never the metadata "
        "address.", example=str(next(iter(reached.values()))))]


def _tag(rule: NetRule, tag: str, ctx: Context) -> list[Finding]:
    family = _tag_family(tag)
    lowered = tag.lower()
    if family == "storage":
        severity = Severity.LOW if ctx.has_sep else Severity.HIGH
        return [Finding(
            "wildcard-storage", severity, rule.rule_id, tag,
            "service tag covers every storage account" + (
                " (names limited by a service endpoint policy)" if ctx.has_sep else ""),
            "The Storage tag is the address space of every customer's storage accounts: "
            f"an attacker's own account is inside it ({AML_GUIDE}, Storage outbound)."
            + (" The service endpoint policy checks names (http, connect, dns); flows "
               "decided by address alone still reach any account." if ctx.has_sep else ""),
            "Add a service endpoint policy listing the accounts (and the "
            "/services/Azure/MachineLearning alias), or use private endpoints.")]
    if lowered in FRONT_DOOR_TAGS:
        return [Finding(
            "shared-front-door", Severity.HIGH, rule.rule_id, tag,
            "service tag of the shared front door",
            "AzureFrontDoor.Frontend is shared by every front door customer; an attacker's "
            f"endpoint sits behind the same addresses ({AML_GUIDE}: it can be used for "
            "data "
            "exfiltration).",
            "Switch to FQDN application rules: `ml.azure.com`, "
            "`automlresources-prod.azureedge.net`.")]
    if family in BROAD_TAGS:
        return [Finding(
            "broad-service-tag", Severity.HIGH, rule.rule_id, tag,
            f"service tag {tag} covers addresses anyone can rent",
            f"{tag} includes every customer's virtual machines and services, so an "
            "attacker's own endpoint is inside it.",
            "Use the specific service tags (e.g. AzureMachineLearning, "
            "BatchNodeManagement.<region>) or CIDRs the workload needs.")]
    if family in MULTI_TENANT_TAGS:
        return [Finding(
            "broad-service-tag", Severity.MEDIUM, rule.rule_id, tag,
            f"service tag {tag} covers a multi-tenant data service",
            f"{tag} is the address space of every customer's instances of the service; "
            "an attacker can create their own and write to it.",
            "Use private endpoints or FQDN rules naming your own instances.")]
    return []
