"""Compile a `Policy` into an immutable `Snapshot` and decide requests against it.

The engine is pure: no I/O, no clock, no globals. Callers (the gateway, the DNS filter,
the library check, the CLI) resolve names themselves and pass the addresses they will
connect to; the snapshot only matches. The order of evaluation is the contract in
`shared/spec/policy-semantics.md`, section 4; each step below cites its number.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytricia
import re2

from egressguard.engine.guard import special_range
from egressguard.engine.hostindex import HostIndex
from egressguard.engine.normalize import (
    URL,
    Host,
    InvalidHost,
    IPAddress,
    canonical_ip,
    normalize_host,
    parse_url,
)
from egressguard.engine.request import Decision, Kind, Layer, Request, Verdict
from egressguard.policy.model import Action, CalloutRule, Policy, is_service_tag

_ALLOWED_FQDN_PORTS = frozenset({80, 443})
_STORAGE_HOST = re.compile(
    r"(?P<account>[a-z0-9]{3,24})(?P<secondary>-secondary)?\.(?:z\d+\.)?"
    r"(?:blob|queue|table|file|dfs|web)\.core\."
    r"(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net|cloudapi\.de)")
_ACCOUNT_ID = re.compile(
    r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.storage/"
    r"storageaccounts/(?P<name>[a-z0-9]{3,24})")


class CompileError(ValueError):
    """A policy that validated but references something unknown (a tag, an alias)."""


@dataclass(frozen=True)
class References:
    """Named things a policy may refer to, supplied by the catalog and imported files.

    * `service_tags`: tag name (`AzureCloud.westeurope`) -> address prefixes.
    * `fqdn_tags`: FQDN tag (`AzureKubernetesService`) -> host patterns.
    * `storage_aliases`: alias (`/services/Azure/MachineLearning`) -> account-name globs.
    * `storage_accounts`: account name -> resource id, so that subscription and resource
      group entries of a service endpoint policy can be enforced.
    """

    service_tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    fqdn_tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    storage_aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    storage_accounts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _AppEntry:
    order: int
    rule_id: str
    action: Action
    # (protocol, port) pairs; port None = any port.
    specs: tuple[tuple[str, int | None], ...]
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    report_only: bool

    def applies(self, kind: Kind, scheme: str | None, port: int | None,
                source: IPAddress | None) -> bool:
        if self.sources and (source is None or not any(source in n for n in self.sources)):
            return False
        if kind is Kind.DNS:
            return True
        for proto, rule_port in self.specs:
            if rule_port is not None and rule_port != port:
                continue
            if kind is Kind.CONNECT or proto == scheme:
                return True
        return False


@dataclass(frozen=True, slots=True)
class _NetEntry:
    order: int
    rule_id: str
    action: Action
    protocols: frozenset[str]
    ports: tuple[tuple[int, int], ...]
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    report_only: bool
    explicit: bool  # matched through a literal IP/CIDR (lifts the address guard)

    def applies(self, protocol: str, port: int | None, source: IPAddress | None) -> bool:
        if "any" not in self.protocols and protocol not in self.protocols:
            return False
        if port is not None and not any(lo <= port <= hi for lo, hi in self.ports):
            return False
        return not self.sources or (source is not None
                                    and any(source in n for n in self.sources))


def _first(entries: Iterable[_AppEntry], kind: Kind, scheme: str | None, port: int | None,
           source: IPAddress | None) -> _AppEntry | None:
    best: _AppEntry | None = None
    for entry in entries:
        if (best is None or entry.order < best.order) and entry.applies(
                kind, scheme, port, source):
            best = entry
    return best


class _CalloutLayer:
    """One callout layer's entries searched together in a single RE2 set."""

    def __init__(self, rules: Sequence[CalloutRule], layer: Layer) -> None:
        self.layer = layer
        self.rules = tuple(rules)
        self._set: re2.Set | None = None
        if rules:
            regex_set = re2.Set.SearchSet()
            for rule in rules:
                regex_set.Add(rule.uri_regex)
            regex_set.Compile()
            self._set = regex_set

    def matches(self, callout_type: str, uri: str) -> list[tuple[int, CalloutRule]]:
        if self._set is None:
            return []
        return [(i, self.rules[i]) for i in sorted(self._set.Match(uri))
                if self.rules[i].callout_type in (callout_type, "*")]


class Snapshot:
    """An immutable, compiled policy. Build with `compile_policy`; call `decide`."""

    def __init__(self, policy: Policy, refs: References) -> None:
        self.policy = policy
        self.restricted = policy.restrict_outbound_network_access
        self.report_only = policy.report_only
        self._immutable = _CalloutLayer(
            [] if self.restricted else list(policy.immutable_callouts), Layer.IMMUTABLE)
        self._cluster = _CalloutLayer(policy.callouts, Layer.CLUSTER)
        self._allowed_fqdns: HostIndex[str] = HostIndex()
        for pattern in policy.allowed_fqdn_list:
            self._allowed_fqdns.add(pattern, pattern)
        self._apps: HostIndex[_AppEntry] = HostIndex()
        self._compile_application_rules(policy, refs)
        self._net_v4 = pytricia.PyTricia(32)
        self._net_v6 = pytricia.PyTricia(128)
        self._net_any: list[_NetEntry] = []
        self._net_hosts: HostIndex[_NetEntry] = HostIndex()
        self._compile_network_rules(policy, refs)
        self._storage = _StorageScope(policy, refs)

    # -- compilation -------------------------------------------------------------------

    def _compile_application_rules(self, policy: Policy, refs: References) -> None:
        order = 0
        for collection in sorted(policy.application_rule_collections,
                                 key=lambda c: c.priority):
            for rule in collection.rules:
                order += 1
                entry = _AppEntry(
                    order=order,
                    rule_id=f"application:{collection.name}/{rule.name}",
                    action=rule.action or collection.action,
                    specs=tuple((p.protocol, p.port) for p in rule.protocols),
                    sources=tuple(ipaddress.ip_network(s) for s in rule.sources),
                    report_only=collection.report_only)
                patterns = list(rule.targets)
                for tag in rule.fqdn_tags:
                    if tag not in refs.fqdn_tags:
                        raise CompileError(
                            f"application rule {entry.rule_id}: unknown FQDN tag {tag!r}")
                    patterns.extend(refs.fqdn_tags[tag])
                for pattern in patterns:
                    self._apps.add(pattern, entry)

    def _compile_network_rules(self, policy: Policy, refs: References) -> None:
        order = 0
        for collection in sorted(policy.network_rule_collections, key=lambda c: c.priority):
            for rule in collection.rules:
                order += 1
                base = dict(
                    order=order, rule_id=f"network:{collection.name}/{rule.name}",
                    action=rule.action or collection.action,
                    protocols=frozenset(rule.protocols),
                    ports=tuple((p.low, p.high) for p in rule.ports),
                    sources=tuple(ipaddress.ip_network(s) for s in rule.sources),
                    report_only=collection.report_only)
                for dest in rule.destinations:
                    if dest == "*":
                        self._net_any.append(_NetEntry(explicit=False, **base))  # type: ignore[arg-type]
                    elif is_service_tag(dest):
                        prefixes = refs.service_tags.get(dest)
                        if prefixes is None:
                            raise CompileError(
                                f"network rule {base['rule_id']}: unknown service tag {dest!r}")
                        for prefix in prefixes:
                            self._add_prefix(prefix, _NetEntry(explicit=False, **base))  # type: ignore[arg-type]
                    elif dest[0].isdigit() or ":" in dest:
                        self._add_prefix(dest, _NetEntry(explicit=True, **base))  # type: ignore[arg-type]
                    else:
                        self._net_hosts.add(dest, _NetEntry(explicit=False, **base))  # type: ignore[arg-type]

    def _add_prefix(self, prefix: str, entry: _NetEntry) -> None:
        net = ipaddress.ip_network(prefix, strict=False)
        trie = self._net_v6 if net.version == 6 else self._net_v4
        key = str(net)
        if trie.has_key(key):
            trie[key].append(entry)
        else:
            trie[key] = [entry]

    # -- matching helpers --------------------------------------------------------------

    def _network_match(self, ip: IPAddress | None, host: str | None, protocol: str,
                       port: int | None, source: IPAddress | None) -> _NetEntry | None:
        best: _NetEntry | None = None

        def consider(entries: Iterable[_NetEntry]) -> None:
            nonlocal best
            for entry in entries:
                if (best is None or entry.order < best.order) and entry.applies(
                        protocol, port, source):
                    best = entry

        if ip is not None:
            trie = self._net_v6 if ip.version == 6 else self._net_v4
            key = trie.get_key(ip)
            while key is not None:
                consider(trie[key])
                key = trie.parent(key)
            consider(self._net_any)
        if host is not None:
            consider(self._net_hosts.matches(host))
        return best

    def _from_entry(self, entry: _AppEntry | _NetEntry, layer: Layer, target: str,
                    port: int | None) -> Decision:
        verdict = Verdict.ALLOW if entry.action is Action.ALLOW else Verdict.DENY
        verb = "allowed" if verdict is Verdict.ALLOW else "denied"
        kind = "network" if layer is Layer.NETWORK else "application"
        return Decision(verdict, layer, entry.rule_id,
                        f"{target} {verb} by {kind} rule {entry.rule_id.partition(':')[2]}",
                        destination=target, port=port,
                        report_only=(entry.report_only or self.report_only)
                        and verdict is Verdict.DENY)

    def _deny(self, layer: Layer, rule: str, reason: str, host: str = "",
              port: int | None = None) -> Decision:
        return Decision(Verdict.DENY, layer, rule, reason, destination=host, port=port,
                        report_only=self.report_only)

    def _default(self, target: str, port: int | None) -> Decision:
        if self.restricted:
            return self._deny(Layer.DEFAULT, "default",
                              f"{target} is not allowed: no rule allows it and outbound "
                              "network access is restricted", target, port)
        return Decision(Verdict.ALLOW, Layer.DEFAULT, "default",
                        f"{target} allowed: outbound network access is not restricted",
                        destination=target, port=port)

    # -- the decision ------------------------------------------------------------------

    def decide(self, request: Request) -> Decision:
        """Decide one request (spec section 4). Never raises for bad input: it denies."""
        url: URL | None = None
        port: int | None
        scheme: str | None
        try:
            if request.uri is not None:
                url = parse_url(request.uri)
                host = url.host
                port = request.port or url.port
                scheme = url.scheme
            else:
                host = normalize_host(request.host)
                port = request.port
                scheme = request.scheme
        except InvalidHost as exc:  # step 1
            return self._deny(Layer.GUARD, "guard:invalid-host", str(exc),
                              request.uri or request.host, request.port)
        target = f"{host.name}:{port}" if port else host.name

        # Step 2: the address guard, on every address the caller will connect to.
        addresses = request.addresses or ((host.ip,) if host.ip is not None else ())
        net_allowed: _NetEntry | None = None
        for raw_ip in addresses:
            ip = canonical_ip(raw_ip)
            entry = self._network_match(ip, None, request.protocol, port, request.source)
            special = special_range(ip)
            if special is not None and not (entry is not None and entry.explicit
                                            and entry.action is Action.ALLOW):
                return self._deny(Layer.GUARD, f"guard:{special}",
                                  f"{target} resolves to {ip} ({special} address); only a "
                                  "network rule naming its CIDR can allow it", target, port)
            if request.kind is Kind.CALLOUT:
                if entry is not None and entry.action is Action.DENY:
                    return self._from_entry(entry, Layer.NETWORK, target, port)
                continue
            if entry is None or entry.action is Action.DENY:
                if entry is not None:
                    return self._from_entry(entry, Layer.NETWORK, target, port)
                net_allowed = None
                break
            net_allowed = entry if net_allowed is None else net_allowed

        if request.kind is Kind.CALLOUT:
            return self._decide_callout(request, url, host)
        if request.kind is Kind.FLOW:
            if net_allowed is not None:
                return self._from_entry(net_allowed, Layer.NETWORK, target, port)
            return self._default(target, port)
        return self._decide_application(request, host, scheme, port, target, net_allowed)

    def _decide_application(self, request: Request, host: Host, scheme: str | None,
                            port: int | None, target: str,
                            net_allowed: _NetEntry | None) -> Decision:
        # Section 6: storage hosts outside the service endpoint policy, before anything else.
        if self._storage.active and not host.is_ip:
            refusal = self._storage.refuse(host.name)
            if refusal is not None:
                return self._deny(Layer.SERVICE_ENDPOINT, "service_endpoint", refusal,
                                  target, port)
        # Step 5: a flow already allowed by a network rule (by address or FQDN).
        if net_allowed is not None:
            return self._from_entry(net_allowed, Layer.NETWORK, target, port)
        if not host.is_ip:
            by_name = self._network_match(None, host.name, request.protocol, port,
                                          request.source)
            if by_name is not None:
                return self._from_entry(by_name, Layer.NETWORK, target, port)
        entry = _first(self._apps.matches(host.name), request.kind, scheme, port,
                       request.source)
        if entry is not None:
            return self._from_entry(entry, Layer.APPLICATION, target, port)
        # Step 6: the allowed FQDN list, ports 80 and 443 only.
        if self.restricted and (port is None or port in _ALLOWED_FQDN_PORTS):
            for pattern in self._allowed_fqdns.matches(host.name):
                return Decision(Verdict.ALLOW, Layer.ALLOWED_FQDN, f"allowed_fqdn:{pattern}",
                                f"{target} is in the allowed FQDN list", destination=target,
                                port=port)
        return self._default(target, port)

    def _decide_callout(self, request: Request, url: URL | None, host: Host) -> Decision:
        callout_type = (request.callout_type or "").lower()
        uri = url.match_string if url is not None else host.name
        matched = self._immutable.matches(callout_type, uri) + [
            (-1 - i, r) for i, r in self._cluster.matches(callout_type, uri)]
        refused = [(i, r) for i, r in matched if not r.can_call]
        chosen = refused[0] if refused else (matched[0] if matched else None)
        if chosen is not None:
            index, rule = chosen
            layer = Layer.IMMUTABLE if index >= 0 else Layer.CLUSTER
            rule_id = f"{layer.value}[{index if index >= 0 else -1 - index}]"
            if rule.can_call:
                return Decision(Verdict.ALLOW, layer, rule_id,
                                f"{callout_type} callout to {uri} allowed by {rule_id} "
                                f"({rule.uri_regex})", destination=host.name)
            return self._deny(layer, rule_id,
                              f"Callout to '{uri}' is not allowed by the callout policy "
                              f"({rule_id} forbids {callout_type})", host.name)
        if self.restricted and callout_type != "webapi":
            for pattern in self._allowed_fqdns.matches(host.name):
                return Decision(Verdict.ALLOW, Layer.ALLOWED_FQDN, f"allowed_fqdn:{pattern}",
                                f"{callout_type} callout to {uri}: {host.name} is in the "
                                "allowed FQDN list", destination=host.name)
        return self._deny(Layer.DEFAULT, "default",
                          f"Callout to '{uri}' is not allowed by the callout policy "
                          f"(no {callout_type or 'typed'} entry matches)", host.name)


class _StorageScope:
    """Which storage accounts service endpoint policies let a cluster reach (section 6)."""

    def __init__(self, policy: Policy, refs: References) -> None:
        self.active = bool(policy.service_endpoint_policies)
        names: set[str] = set()
        prefixes: list[str] = []
        globs: list[re.Pattern[str]] = []
        for sep in policy.service_endpoint_policies:
            for resource in sep.resources:
                text = resource.strip().lower().rstrip("/")
                found = _ACCOUNT_ID.fullmatch(text)
                if found:
                    names.add(found.group("name"))
                elif text.startswith("/subscriptions/"):
                    prefixes.append(text + "/")
                else:
                    names.add(text)
            for alias in sep.aliases:
                if alias not in refs.storage_aliases:
                    raise CompileError(f"service endpoint policy {sep.name}: unknown alias "
                                       f"{alias!r}")
                globs.extend(re.compile(fnmatch.translate(g.lower()))
                             for g in refs.storage_aliases[alias])
        inventory = {k.lower(): v.lower() for k, v in refs.storage_accounts.items()}
        for account, resource_id in inventory.items():
            if any(resource_id.startswith(p) for p in prefixes):
                names.add(account)
        self.names = frozenset(names)
        self.globs = tuple(globs)

    def refuse(self, host: str) -> str | None:
        """A denial reason if `host` is a storage account outside the policy, else None."""
        found = _STORAGE_HOST.fullmatch(host)
        if found is None:
            return None
        account = found.group("account")
        if account in self.names or any(g.fullmatch(account) for g in self.globs):
            return None
        return (f"storage account {account!r} ({host}) is not in the cluster's service "
                "endpoint policy")


def compile_policy(policy: Policy, refs: References | None = None) -> Snapshot:
    """Compile a validated policy into a `Snapshot`; raises `CompileError` on unknown
    references (service tags, FQDN tags, aliases)."""
    return Snapshot(policy, refs or References())
