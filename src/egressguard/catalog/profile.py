"""Turn a catalog into the least policy one deployment needs (pure: no I/O).

`plan_aks` / `plan_aml` select the rows a deployment needs (cloud, features, conditions),
fill every placeholder, pick the narrowest destination each network row allows, and return
a `Plan`; `render` writes it as a commented policy file in the `egressguard.policy` format.
Every choice the generator makes is written into the file as a comment, so a reviewer can
check it against the seed without reading this code.
"""

from __future__ import annotations

import ipaddress
import re
import textwrap
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from egressguard.catalog.model import (
    Catalog,
    CatalogError,
    Destination,
    Row,
    Section,
    check_cloud,
    check_region,
    get_catalog,
)

_REGION_PLACEHOLDERS = ("<location>", "<region>", "<Region>", "<cluster-region-name>")
_UNFILLED = re.compile(r"<[^<>]+>|APIServerPublicIP|CustomDNSIP|RegionCIDRs")
# Which alternative of a network row to use, narrowest first. RegionCIDRs is never chosen:
# the service tag `AzureCloud.<region>` names the same prefixes and stays current on import.
_PREFERENCE = ("api_server_ip", "custom_dns_ip", "service_tag", "fqdn", "any")
# The public document each catalog transcribes, as a generated policy cites it.
_DOCUMENT = {
    "aks": '"Outbound network and FQDN rules for Azure Kubernetes Service (AKS) clusters"',
    "aml": '"Configure data exfiltration prevention" (Azure Machine Learning)',
    "iot-hub": '"Restrict IoT Hub outbound network access and data loss prevention"',
    "data-explorer": '"Restrict outbound access from your Azure Data Explorer cluster"',
}


def fill_region(text: str, region: str) -> str:
    """Replace the seeds' region placeholders (all spellings) with `region`."""
    for placeholder in _REGION_PLACEHOLDERS:
        text = text.replace(placeholder, region)
    if text == "AzureCloud.Region":  # the AKS document spells the 21Vianet row without brackets
        text = f"AzureCloud.{region}"
    return text


def has_region_placeholder(text: str) -> bool:
    return any(p in text for p in _REGION_PLACEHOLDERS) or text == "AzureCloud.Region"


@dataclass(frozen=True)
class Options:
    """What a deployment looks like; everything a row's condition or placeholder may need."""

    cloud: str
    region: str
    features: tuple[str, ...] = ()
    private_cluster: bool = False
    api_server_ip: str | None = None
    custom_dns: tuple[str, ...] = ()
    mode: str = "firewall"                 # aml only
    storage_accounts: tuple[str, ...] = ()  # aml only
    known_tags: Container[str] | None = None  # imported service tags, for warnings
    command: str = ""


@dataclass
class PlannedRule:
    name: str
    destinations: list[str]
    protocols: list[str]
    ports: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class PlannedCollection:
    name: str
    kind: str            # network / application
    priority: int
    rules: list[PlannedRule] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


@dataclass
class Plan:
    header: list[str]
    collections: list[PlannedCollection]
    service_endpoint_policies: list[tuple[str, list[str], list[str], list[str]]] = field(
        default_factory=list)  # (name, resources, aliases, comments)
    warnings: list[str] = field(default_factory=list)


# -- selection -----------------------------------------------------------------------------


def _flags(options: Options, catalog: Catalog) -> set[str]:
    flags = {f.replace("-", "_") for f in options.features
             if catalog.features.get(f, {}).get("kind") == "option"}
    if options.private_cluster:
        flags.add("private_cluster")
    if options.custom_dns:
        flags.add("custom_dns")
    return flags


def _check_features(catalog: Catalog, options: Options) -> None:
    valid = [n for n, f in catalog.features.items() if f.get("kind") != "base"]
    unknown = [f for f in options.features if f not in catalog.features]
    if unknown:
        raise CatalogError(f"unknown feature {', '.join(map(repr, unknown))} for {catalog.name};"
                           f" choose from: {', '.join(valid)}")
    for feature in options.features:
        if catalog.features[feature].get("kind") != "section":
            continue
        if not any(s.feature == feature and options.cloud in s.clouds
                   for s in catalog.sections):
            here = [n for n in valid if catalog.features[n].get("kind") == "option" or any(
                s.feature == n and options.cloud in s.clouds for s in catalog.sections)]
            raise CatalogError(
                f"feature {feature!r}: {_DOCUMENT[catalog.name]} lists no rows for cloud "
                f"{options.cloud}; features available there: {', '.join(here)}")


def _excluded_by(row: Row, flags: set[str]) -> str | None:
    missing = [k for k in row.only_if if k not in flags]
    present = [k for k in row.unless if k in flags]
    if missing or present:
        return row.condition or ", ".join(missing + present)
    return None


# -- filling -------------------------------------------------------------------------------


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise CatalogError(f"{what}: {value!r} is not an IP address") from None


def _choose(row: Row, options: Options) -> tuple[list[str], Destination]:
    """The destinations for one network row: its narrowest alternative we can fill."""
    by_form = {d.form: d for d in row.destinations}
    for form in _PREFERENCE:
        dest = by_form.get(form)
        if dest is None:
            continue
        if form == "api_server_ip":
            if options.api_server_ip:
                return [_ip(options.api_server_ip, "--api-server-ip")], dest
            if len(row.destinations) == 1:
                raise CatalogError(
                    f"rule {row.section.id}/{row.id} ({row.purpose}) needs the API server's "
                    "public IP: pass --api-server-ip IP (known after cluster creation)")
            continue
        if form == "custom_dns_ip":
            if not options.custom_dns:
                raise CatalogError(f"rule {row.section.id}/{row.id} needs --custom-dns IP")
            return [_ip(ip, "--custom-dns") for ip in options.custom_dns], dest
        return [fill_region(dest.value, options.region)], dest
    raise CatalogError(f"rule {row.section.id}/{row.id}: no usable destination")


def _filled(value: str, row: Row) -> str:
    found = _UNFILLED.search(value)
    if found:
        raise CatalogError(f"rule {row.section.id}/{row.id}: no value for {found.group(0)}")
    return value


def covers(pattern: str, target: str) -> bool:
    """Whether host pattern `pattern` matches every name `target` matches (semantics §3),
    so that a later rule for `target` would never be reached."""
    if pattern == target or pattern == "*":
        return True
    if target.startswith("."):
        base, apex = target[1:], True
    elif "*" in target.partition(".")[0]:
        base, apex = target.partition(".")[2], False
    else:
        base, apex = target, True
    if pattern.startswith("*."):
        suffix = pattern[2:]
        return base.endswith("." + suffix) or (not apex and base == suffix)
    if pattern.startswith("."):
        suffix = pattern[1:]
        return base == suffix or base.endswith("." + suffix)
    return False


# -- planning ------------------------------------------------------------------------------


def _source(catalog: Catalog, section: Section) -> str:
    tab = f" (tab: {section.tab})" if section.tab else ""
    return f"source: {_DOCUMENT[catalog.name]}, \"{section.section}\"{tab}"


def _plan(catalog: Catalog, options: Options, sections: Sequence[Section]) -> Plan:
    flags = _flags(options, catalog)
    plan = Plan(header=[], collections=[])
    emitted: dict[tuple[str, str], str] = {}  # (target, protocol:port) -> rule id
    net_priority, app_priority = 100, 200
    for section in sections:
        is_net = section.kind == "network"
        collection = PlannedCollection(
            name=f"{catalog.name}-{section.id}", kind=section.kind,
            priority=net_priority if is_net else app_priority,
            comments=[f"{section.section}" + (f" (tab: {section.tab})" if section.tab else "")]
            + ([section.note] if section.note else []))
        if is_net:
            net_priority += 10
        else:
            app_priority += 10
        for row in section.rows:
            if options.cloud not in row.clouds:
                continue
            reason = _excluded_by(row, flags)
            if reason is not None:
                collection.comments.append(f"omitted {row.id}: {reason}")
                continue
            rule = _row_rule(catalog, section, row, options, plan, emitted, collection)
            if rule is not None:
                collection.rules.append(rule)
        plan.collections.append(collection)
    return plan


def _row_rule(catalog: Catalog, section: Section, row: Row, options: Options, plan: Plan,
              emitted: dict[tuple[str, str], str],
              collection: PlannedCollection) -> PlannedRule | None:
    comments = textwrap.wrap(row.purpose, 90) if row.purpose else []
    comments.append(_source(catalog, section))
    if row.condition:
        comments.append(f"condition (met by this profile): {row.condition}")
    if not row.protocol_stated:
        comments.append(f"protocol: the document gives only port {row.port}; "
                        f"{row.protocol} assumed")
    rule_id = f"{collection.name}/{row.id}"
    if section.kind == "network":
        values, chosen = _choose(row, options)
        values = [_filled(v, row) for v in values]
        if len(row.destinations) > 1:
            comments.append("the document's alternatives: " + ", ".join(
                d.value + (f" ({d.note})" if d.note else "") for d in row.destinations)
                + f"; chosen: {', '.join(values)} ({chosen.form.replace('_', ' ')})")
        for value in values:
            if chosen.form == "service_tag" and options.known_tags is not None \
                    and value not in options.known_tags:
                plan.warnings.append(
                    f"{rule_id}: service tag {value} is not in the imported service tags; "
                    "import them (`egressguard servicetags import FILE`) before serving")
        protocols = [row.protocol.lower()]
        ports = [str(row.port)]
    else:
        hosts = [_filled(fill_region(h, options.region), row)
                 for h in row.targets_for(options.cloud)]
        spec = f"{row.protocol.lower()}:{row.port}"
        values = []
        for host in hosts:
            earlier = next((f"{rid} ({pattern})" for (pattern, s), rid in emitted.items()
                            if s == spec and covers(pattern, host)), None)
            if earlier is not None:
                comments.append(f"{host} ({spec}) is already allowed by rule {earlier}")
            else:
                emitted[(host, spec)] = rule_id
                values.append(host)
        protocols, ports = [spec], []
        if not values:
            collection.comments.append(f"{row.id}: every target is already allowed earlier ("
                                       + "; ".join(comments[-len(hosts):]) + ")")
            return None
    if row.caveat:
        comments.append(f"caveat: {row.caveat}")
        plan.warnings.append(f"{rule_id}: {row.caveat}")
    short = row.purpose.split(". ")[0].rstrip(".") or section.section.split(" > ")[-2 if (
        " > " in section.section) else -1]
    return PlannedRule(name=row.id, destinations=values, protocols=protocols, ports=ports,
                       comments=comments, description=f"{short} [{_DOCUMENT[catalog.name]}]")


def plan_aks(options: Options) -> Plan:
    catalog = get_catalog("aks")
    check_cloud(options.cloud)
    region = check_region(options.cloud, options.region)
    options = _replace(options, region=region)
    _check_features(catalog, options)
    if options.api_server_ip:
        _ip(options.api_server_ip, "--api-server-ip")
    chosen = {"required", *options.features}
    sections = [s for s in catalog.sections if s.feature in chosen and options.cloud in s.clouds]
    sections.sort(key=lambda s: s.kind != "network")
    plan = _plan(catalog, options, sections)
    plan.header = _header(catalog, options)
    return plan


def plan_aml(options: Options) -> Plan:
    catalog = get_catalog("aml")
    check_cloud(options.cloud, catalog.clouds)
    region = check_region(options.cloud, options.region)
    options = _replace(options, region=region)
    _check_features(catalog, options)
    modes = tuple(catalog.raw["modes"])
    if options.mode not in modes:
        raise CatalogError(f"unknown mode {options.mode!r}; choose one of: {', '.join(modes)}")
    sep = catalog.raw["service_endpoint_policy"]
    if not options.storage_accounts:
        raise CatalogError(
            f"profile aml needs --storage-account (the workspace's default storage account: "
            f"name or resource id), for the service endpoint policy of {_DOCUMENT['aml']} "
            f"\"{sep['section']}\"")
    chosen = {"required", *options.features}
    sections = [s for s in catalog.sections if s.feature in chosen
                and s.mode in ("", options.mode)]
    sections.sort(key=lambda s: s.kind != "network")
    plan = _plan(catalog, options, sections)
    plan.header = _header(catalog, options)
    if options.mode == "firewall":
        plan.collections.append(_storage_service_endpoint(plan))
    plan.service_endpoint_policies.append((
        "aml-storage", list(options.storage_accounts), list(sep["aliases"]),
        [f"source: {_DOCUMENT['aml']}, \"{sep['section']}\"", sep["note"],
         "alias expansion: see `egressguard catalog show aml` (storage-aliases.yaml says "
         "what is known)"]))
    return plan


STORAGE_SERVICES = ("blob", "file", "queue", "table", "dfs")


def _storage_service_endpoint(plan: Plan) -> PlannedCollection:
    """The Azure ML document's step 3: the compute subnet reaches storage through its
    Microsoft.Storage service endpoint, not through the firewall, and the service endpoint
    policy limits that to the workspace's accounts and the alias. Here both go through
    egressguard: this rule is the service endpoint, and the policy's
    `service_endpoint_policies` (checked first) refuse every account outside them, and
    every name under a storage domain that is no account host."""
    priority = max((c.priority for c in plan.collections if c.kind == "application"),
                   default=190) + 10
    rule = PlannedRule(
        name="storage-service-endpoint",
        destinations=[f"*.{s}.core.windows.net" for s in STORAGE_SERVICES],
        protocols=["https:443"],
        comments=["storage over the subnet's service endpoint; only the accounts of the "
                  "service endpoint policy below pass (\"Configure data exfiltration "
                  "prevention\": \"1. Create the service "
                  "endpoint policy\", \"3. Enable storage endpoint for the subnet\")"],
        description=f"workspace storage through the service endpoint [{_DOCUMENT['aml']}]")
    return PlannedCollection(
        name="aml-storage-service-endpoint", kind="application", priority=priority,
        rules=[rule], comments=["3. Enable storage endpoint for the subnet (tab: Firewall)",
                                "limited by the service endpoint policy aml-storage"])


def _replace(options: Options, **changes: object) -> Options:
    from dataclasses import replace
    return replace(options, **changes)  # type: ignore[arg-type]


def _header(catalog: Catalog, options: Options) -> list[str]:
    lines = [f"egressguard policy generated by: {options.command or 'egressguard profile'}",
             f"catalog: {catalog.title}", f"from {catalog.source}",
             f"cloud: {options.cloud}  region: {options.region}  features: "
             f"{', '.join(options.features) or '(none)'}"]
    if catalog.name == "aks":
        lines.append(f"private cluster: {'yes' if options.private_cluster else 'no'}")
    else:
        lines.append(f"mode: {options.mode}")
    lines.append("Restricted: anything not allowed below is denied. Regenerate rather than "
                 "edit by hand.")
    return lines


# -- rendering -----------------------------------------------------------------------------


def _q(text: str) -> str:
    import json
    return json.dumps(text)


def _flow(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def render(plan: Plan) -> str:
    """The plan as a policy file (YAML with comments) that `load_policy` accepts."""
    out = [f"# {line}" for line in plan.header]
    out.append("restrict_outbound_network_access: true")
    for kind, key in (("network", "network_rule_collections"),
                      ("application", "application_rule_collections")):
        collections = [c for c in plan.collections if c.kind == kind]
        out.append(f"{key}:" + ("" if collections else " []"))
        for coll in collections:
            out.append("")
            out.extend(f"  # {c}" for c in coll.comments)
            out += [f"  - name: {_q(coll.name)}", f"    priority: {coll.priority}",
                    "    action: allow", "    rules:" + ("" if coll.rules else " []")]
            for rule in coll.rules:
                out.extend(f"      # {c}" for c in rule.comments)
                out.append(f"      - name: {_q(rule.name)}")
                if kind == "network":
                    out += [f"        destinations: {_flow(rule.destinations)}",
                            f"        protocols: {_flow(rule.protocols)}",
                            f"        ports: {_flow(rule.ports)}"]
                else:
                    out += [f"        targets: {_flow(rule.destinations)}",
                            f"        protocols: {_flow(rule.protocols)}"]
                out.append(f"        description: {_q(rule.description)}")
    if plan.service_endpoint_policies:
        out.append("service_endpoint_policies:")
        for name, resources, aliases, comments in plan.service_endpoint_policies:
            out.extend(f"  # {c}" for c in comments)
            out += [f"  - name: {_q(name)}", "    service: Microsoft.Storage",
                    f"    resources: {_flow(resources)}", f"    aliases: {_flow(aliases)}"]
    return "\n".join(out) + "\n"
