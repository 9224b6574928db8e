"""Compile a `Policy` into an immutable `Snapshot` and decide requests against it.

The engine is pure: no I/O, no clock, no globals. Callers (the gateway, the DNS filter,
the library check, the CLI) resolve names themselves and pass the addresses they will
connect to; the snapshot only matches. The order of evaluation is the contract in
`docs/policy-semantics.md`, section 4; each step below cites its number.
"""

from __future__ import annotations

import dataclasses
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
from egressguard.errors import InputError
from egressguard.policy.load import locate
from egressguard.policy.model import (
    Action,
    CalloutRule,
    Policy,
    validate_host_pattern,
)
from egressguard.policy.rules import (
    APPLIES_TO_NOBODY,
    DestKind,
    NetRule,
    RuleId,
    expand_fqdn_tags,
    iter_application_rules,
    iter_network_rules,
    storage_entries,
)

_ALLOWED_FQDN_PORTS = frozenset({80, 443})
# What the allowed-FQDN list opens per cluster kind (semantics §4 step 6): IoT Hub's
# egress is its endpoint protocols, HTTPS 443, AMQP 5671 (AMQP over WebSockets: 443) and
# Kafka 9093, to names only, and it makes no callouts; Data Explorer's is HTTP/HTTPS and
# callouts.
IOTHUB_PORTS = frozenset({443, 5671, 9093})
# With `callout_enforcement: gateway`, the callout types a proxied connection to each port
# may be (semantics §4 step 3): TDS, PostgreSQL and MySQL by their ports, the rest HTTPS.
CALLOUT_PORTS: dict[int, tuple[str, ...]] = {
    1433: ("sql",), 5432: ("postgresql",), 3306: ("mysql",),
    443: ("kusto", "webapi", "external_data", "cosmosdb", "azure_openai",
          "azure_digital_twins", "sandbox_artifacts"),
}
CALLOUT_ERROR = "(error SEM0056)"
"""Ends every refused callout's reason, as Data Explorer's semantic error does."""
_MEMO_SIZE = 32768  # decisions remembered per snapshot and request kind (~20 MB at most)
_Memoised = tuple[tuple[IPAddress, ...], Decision]  # (the addresses decided for, decision)
_STORAGE_DOMAIN = re.compile(
    r"(?:^|\.)(?:blob|queue|table|file|dfs|web)\.core\."
    r"(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net|cloudapi\.de)$")
_STORAGE_HOST = re.compile(
    r"(?P<account>[a-z0-9]{3,24})(?P<secondary>-secondary)?\.(?:z\d+\.)?"
    r"(?:blob|queue|table|file|dfs|web)\.core\."
    r"(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net|cloudapi\.de)")


class CompileError(InputError, ValueError):
    """A policy that validated but references something unknown (a tag, an alias). The
    message starts with the file, line and path when the policy was loaded from text."""

    def about(self, label: str) -> str:
        """The message, with `label` (a file, a cluster version) in front unless it
        already starts with it."""
        text = str(self)
        return text if text.startswith(label) else f"{label}: {text}"


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


_DNS, _CONNECT, _HTTP, _CALLOUT, _FLOW = Kind.DNS, Kind.CONNECT, Kind.HTTP, Kind.CALLOUT, Kind.FLOW
_ALLOW, _DENY = Verdict.ALLOW, Verdict.DENY


_Specs = tuple[tuple[str, int | None], ...]
_Shape = tuple[frozenset[tuple[str, int]], frozenset[str], frozenset[int]]


def _shape(specs: _Specs, shapes: dict[_Specs, _Shape] | None) -> _Shape:
    """(the (protocol, port) pairs, the any-port protocols, the ports) of `specs`, shared
    through `shapes` by the rules of one compile: 100k rules have a handful of shapes."""
    found = shapes.get(specs) if shapes is not None else None
    if found is None:
        found = (frozenset((p, port) for p, port in specs if port is not None),
                 frozenset(p for p, port in specs if port is None),
                 frozenset(port for _, port in specs if port is not None))
        if shapes is not None:
            shapes[specs] = found
    return found


class _AppEntry:
    """One application rule, compiled: which (protocol, port) pairs it covers."""

    __slots__ = ("action", "allow", "any_port_protocols", "connect_any", "connect_ports",
                 "identities", "order", "pairs", "reason_tail", "report_only", "rule_id",
                 "sources", "verdict")

    def __init__(self, order: int, rule_id: str, action: Action,
                 specs: Sequence[tuple[str, int | None]],
                 sources: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 report_only: bool, identities: frozenset[str] = frozenset(),
                 shapes: dict[_Specs, _Shape] | None = None) -> None:
        self.order = order
        self.rule_id = rule_id
        self.action = action
        self.allow = action is Action.ALLOW
        self.verdict = _ALLOW if self.allow else _DENY
        self.reason_tail = (f" {'allowed' if self.allow else 'denied'} by application rule "
                            f"{rule_id.partition(':')[2]}")
        self.sources = tuple(sources)
        self.identities = identities
        self.report_only = report_only
        self.pairs, self.any_port_protocols, self.connect_ports = _shape(tuple(specs), shapes)
        self.connect_any = bool(self.any_port_protocols)

    def applies(self, kind: Kind, scheme: str | None, port: int | None,
                source: IPAddress | None, identity: str | None) -> bool:
        if self.identities and identity not in self.identities:
            return False
        if self.sources and (source is None or not any(source in n for n in self.sources)):
            return False
        if kind is _DNS:  # a name lookup has no port yet: the rule's names are what count
            return True
        if kind is _CONNECT:  # a tunnel: the port is all we know of the protocol
            return self.connect_any or port in self.connect_ports
        return (scheme, port) in self.pairs or scheme in self.any_port_protocols


class _NetEntry:
    """One network rule destination, compiled."""

    __slots__ = ("action", "allow", "any_protocol", "explicit", "identities", "names",
                 "order", "ports", "protocols", "reason_tail", "report_only", "rule_id",
                 "sources", "verdict")

    def __init__(self, order: int, rule_id: str, action: Action, protocols: frozenset[str],
                 ports: tuple[tuple[int, int], ...],
                 sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                 report_only: bool, explicit: bool, names: bool = False,
                 identities: frozenset[str] = frozenset()) -> None:
        self.order = order
        self.rule_id = rule_id
        self.action = action
        self.allow = action is Action.ALLOW
        self.verdict = _ALLOW if self.allow else _DENY
        self.reason_tail = (f" {'allowed' if self.allow else 'denied'} by network rule "
                            f"{rule_id.partition(':')[2]}")
        self.protocols = protocols
        self.any_protocol = "any" in protocols
        self.ports = ports
        self.sources = sources
        self.report_only = report_only
        self.explicit = explicit  # matched through a literal IP/CIDR (lifts the guard)
        self.names = names  # match_resolved_names: may allow a name by its addresses
        self.identities = identities  # empty: any caller

    def applies(self, protocol: str, port: int | None, source: IPAddress | None,
                identity: str | None) -> bool:
        if self.identities and identity not in self.identities:
            return False
        if not self.any_protocol and protocol not in self.protocols:
            return False
        if port is not None and not any(lo <= port <= hi for lo, hi in self.ports):
            return False
        return not self.sources or (source is not None
                                    and any(source in n for n in self.sources))


_Entry = _AppEntry | _NetEntry
_L_GUARD, _L_NETWORK, _L_APPLICATION = Layer.GUARD, Layer.NETWORK, Layer.APPLICATION
_L_DEFAULT, _L_ALLOWED_FQDN, _L_SEP = Layer.DEFAULT, Layer.ALLOWED_FQDN, Layer.SERVICE_ENDPOINT
_L_IMMUTABLE, _L_CLUSTER = Layer.IMMUTABLE, Layer.CLUSTER
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class _CalloutLayer:
    """One callout layer's entries: one RE2 set per callout type (its own entries and the
    `*` entries), so a decision runs one automaton over the URI whatever the layer's size."""

    def __init__(self, rules: Sequence[CalloutRule], layer: Layer) -> None:
        self.layer = layer
        self.rules = tuple(rules)
        by_type: dict[str, list[int]] = {}
        for index, rule in enumerate(self.rules):
            by_type.setdefault(rule.callout_type, []).append(index)
        wildcard = by_type.pop("*", [])
        self._sets: dict[str, tuple[re2.Set, tuple[int, ...]]] = {}
        for callout_type, indices in by_type.items():
            self._sets[callout_type] = self._compile(sorted(indices + wildcard))
        self._wildcard = self._compile(wildcard) if wildcard else None

    def _compile(self, indices: list[int]) -> tuple[re2.Set, tuple[int, ...]]:
        regex_set = re2.Set.SearchSet(_RE2_OPTIONS)
        for index in indices:
            regex_set.Add(self.rules[index].uri_regex)
        regex_set.Compile()
        return regex_set, tuple(indices)

    def matches(self, callout_type: str, uri: str) -> list[tuple[int, CalloutRule]]:
        """(index, rule) of every entry of this type (or `*`) whose regex is found in
        `uri`, in policy order."""
        compiled = self._sets.get(callout_type) or self._wildcard
        if compiled is None:
            return []
        regex_set, indices = compiled
        found = regex_set.Match(uri)  # None, not [], when nothing matches
        if not found:
            return []
        return [(indices[i], self.rules[indices[i]]) for i in sorted(found)]


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
        self._source_scoped = False
        """True when some rule is scoped by source (`sources:`): a decision may then depend
        on the source address itself, not only on the identity it maps to (the memo key)."""
        self._compile_application_rules(policy, refs)
        self._net_v4 = pytricia.PyTricia(32)
        self._net_v6 = pytricia.PyTricia(128)
        self._net_any: list[_NetEntry] = []
        self._net_hosts: HostIndex[_NetEntry] = HostIndex()
        self._names_by_address = False
        self._compile_network_rules(policy, refs)
        for trie in (self._net_v4, self._net_v6):
            _merge_ancestors(trie)
        # pytricia's len() walks the whole tree: remember emptiness once.
        self._has_v4, self._has_v6 = bool(len(self._net_v4)), bool(len(self._net_v6))
        self._has_net = bool(self._has_v4 or self._has_v6 or self._net_any)
        self._has_net_hosts = bool(self._net_hosts)
        self.decides_by_address = self._names_by_address
        """True when a network rule allowing by address opts in to names
        (`match_resolved_names`): a name's verdict may then depend on what it resolves to,
        so it must be resolved before it is decided. When False, addresses can only add
        denials (the guard, deny rules), so a name denied without its addresses is denied
        whatever it resolves to and need never be looked up (semantics §4 step 5)."""
        self._trusted_v4 = pytricia.PyTricia(32)
        self._trusted_v6 = pytricia.PyTricia(128)
        for cidr in policy.trusted_ranges:
            net = ipaddress.ip_network(cidr)
            (self._trusted_v6 if net.version == 6 else self._trusted_v4)[str(net)] = True
        self._has_trusted = bool(policy.trusted_ranges)
        self._has_allowed_fqdns = bool(self._allowed_fqdns)
        self._iothub = policy.kind == "iothub"
        self._gateway_callouts = policy.callout_enforcement == "gateway"
        self._storage = _StorageScope(policy, refs)
        self.require_identity = policy.require_identity
        self.identities = frozenset(name for name, methods in policy.identities.items()
                                    if methods.enabled)
        self._source_ids_v4 = pytricia.PyTricia(32)
        self._source_ids_v6 = pytricia.PyTricia(128)
        for name in sorted(self.identities):
            for cidr in policy.identities[name].sources:
                net = ipaddress.ip_network(cidr)
                (self._source_ids_v6 if net.version == 6 else self._source_ids_v4)[
                    str(net)] = name
        self._has_source_identities = bool(len(self._source_ids_v4)
                                           or len(self._source_ids_v6))
        self._memo_connect: dict[tuple[object, ...], _Memoised] = {}
        self._memo_http: dict[tuple[object, ...], _Memoised] = {}
        self._memo_other: dict[tuple[object, ...], _Memoised] = {}

    # -- compilation -------------------------------------------------------------------

    def _compile_application_rules(self, policy: Policy, refs: References) -> None:
        shapes: dict[_Specs, _Shape] = {}  # port shapes shared by the rules of one compile
        for rule in iter_application_rules(policy):  # the one flattening (policy/rules.py)
            if rule.sources:
                self._source_scoped = True
            if rule.identities == APPLIES_TO_NOBODY:
                continue  # scoped to identities its collection excludes: never matches
            entry = _AppEntry(order=rule.order, rule_id=str(rule.id), action=rule.action,
                              specs=rule.specs, sources=rule.sources,
                              report_only=rule.report_only, identities=rule.identities,
                              shapes=shapes)
            patterns, unknown = expand_fqdn_tags(rule, refs.fqdn_tags)
            if unknown:
                where = _where(policy, rule.id, "fqdn_tags", unknown[0])
                raise CompileError(
                    f"{where}: unknown FQDN tag {unknown[0]!r} (application rule "
                    f"{entry.rule_id})",
                    hint="`egressguard catalog list` shows the known FQDN tags")
            add = self._apps.add
            for index, pattern in enumerate(patterns):
                # Tag patterns come from catalogs: canonicalise them as the model did
                # the rule's own targets.
                add(pattern if index < len(rule.targets) else validate_host_pattern(pattern),
                    entry)

    def _compile_network_rules(self, policy: Policy, refs: References) -> None:
        for rule in iter_network_rules(policy):  # the one flattening (policy/rules.py)
            if rule.sources:
                self._source_scoped = True
            if rule.identities == APPLIES_TO_NOBODY:
                continue

            def entry(explicit: bool, rule: NetRule = rule) -> _NetEntry:
                return _NetEntry(
                    order=rule.order, rule_id=str(rule.id), action=rule.action,
                    protocols=rule.protocols, ports=rule.ports, sources=rule.sources,
                    report_only=rule.report_only, explicit=explicit,
                    names=rule.match_resolved_names, identities=rule.identities)

            if rule.match_resolved_names and rule.allow and any(
                    d.kind is not DestKind.HOST for d in rule.destinations):
                self._names_by_address = True

            for dest in rule.destinations:
                if dest.kind is DestKind.ANY:
                    self._net_any.append(entry(False))
                elif dest.kind is DestKind.TAG:
                    prefixes = refs.service_tags.get(dest.text)
                    if prefixes is None:
                        where = _where(policy, rule.id, "destinations", dest.text)
                        raise CompileError(
                            f"{where}: unknown service tag {dest.text!r} (network rule "
                            f"{rule.id})",
                            hint="import a service-tag file with `egressguard "
                                 "servicetags import FILE`")
                    tagged = entry(False)
                    for prefix in prefixes:
                        self._add_prefix(prefix, tagged)
                elif dest.kind is DestKind.NET:
                    # A literal CIDR names its addresses explicitly, except /0, which
                    # is `*` spelled differently and must not lift the address guard.
                    self._add_prefix(dest.text, entry(dest.explicit))
                else:
                    self._net_hosts.add(dest.text, entry(False))

    def _trusted(self, ip: IPAddress) -> bool:
        """Whether `ip` is in the policy's `trusted_ranges`."""
        trie = self._trusted_v6 if ip.version == 6 else self._trusted_v4
        return self._has_trusted and trie.get(ip) is not None

    def _add_prefix(self, prefix: str, entry: _NetEntry) -> None:
        net = ipaddress.ip_network(prefix, strict=False)
        trie = self._net_v6 if net.version == 6 else self._net_v4
        key = str(net)
        if trie.has_key(key):
            trie[key].append(entry)
        else:
            trie[key] = [entry]

    # -- matching helpers --------------------------------------------------------------

    def _ip_entries(self, ip: IPAddress) -> list[_NetEntry]:
        """Every network entry whose destination contains `ip` (CIDRs, tags and `*`):
        one longest-prefix lookup, as each prefix holds its ancestors' entries too."""
        if ip.version == 4:
            found = self._net_v4.get(ip) if self._has_v4 else None
        else:
            found = self._net_v6.get(ip) if self._has_v6 else None
        if found is None:
            return self._net_any
        return found + self._net_any if self._net_any else found

    @staticmethod
    def _first_net(entries: Iterable[_NetEntry], protocol: str, port: int | None,
                   source: IPAddress | None, enforced: bool,
                   identity: str | None) -> _NetEntry | None:
        best: _NetEntry | None = None
        for entry in entries:
            if (best is None or entry.order < best.order) and not (
                    enforced and entry.report_only) and entry.applies(protocol, port, source,
                                                                      identity):
                best = entry
        return best

    def _from_entry(self, entry: _Entry, layer: Layer, target: str, port: int | None,
                    enforced: Decision | None = None) -> Decision:
        """The decision a matched rule makes.

        A rule of a report-only collection never changes what is enforced (`enforced` is
        the decision the other rules make): its deny is recorded as report-only when the
        enforced decision allows; otherwise the enforced decision stands.
        """
        if entry.report_only and enforced is not None and (
                entry.allow or not enforced.allowed):
            return enforced
        allow = entry.allow
        return Decision(entry.verdict, layer, entry.rule_id, target + entry.reason_tail,
                        target, port,
                        not allow and (entry.report_only or self.report_only))

    def _deny(self, layer: Layer, rule: str, reason: str, host: str = "",
              port: int | None = None) -> Decision:
        return Decision(_DENY, layer, rule, reason, host, port, self.report_only)

    def _default(self, target: str, port: int | None) -> Decision:
        if self.restricted:
            return Decision(_DENY, _L_DEFAULT, "default",
                            f"{target} is not allowed: no rule allows it and outbound "
                            "network access is restricted", target, port, self.report_only)
        return Decision(_ALLOW, _L_DEFAULT, "default",
                        f"{target} allowed: outbound network access is not restricted",
                        target, port)

    # -- the decision ------------------------------------------------------------------

    def decide(self, request: Request) -> Decision:
        """Decide one request (semantics §4). Never raises for bad input: it denies.

        Every decision is memoised per snapshot: the snapshot is immutable and `Decision`
        frozen, and a decision is a function of the request's fields alone, so a repeated
        request gets the same answer without re-normalising or re-matching. The key holds
        every field the decision reads; the source only when some rule is scoped by source
        (otherwise only the identity it maps to counts). The resolved addresses are kept
        in the entry and compared on a hit (the gateway's resolver cache hands out the very
        same tuple, so that is one identity check): a request naming the same host with
        other addresses (a rebinding to a private range) is decided afresh. The memo is
        bounded (cleared when full), so random names cannot grow it without limit.
        """
        memo, key = self._memo_slot(request)
        addresses = request.addresses
        found = memo.get(key)
        if found is not None and (found[0] is addresses or found[0] == addresses):
            return found[1]
        decision = self._decide(request)
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[key] = (addresses, decision)
        return decision

    def recall(self, request: Request) -> Decision | None:
        """The memoised decision of `request`, or None when `decide` would have to work
        it out (for a caller that times only real decisions)."""
        memo, key = self._memo_slot(request)
        found = memo.get(key)
        addresses = request.addresses
        if found is not None and (found[0] is addresses or found[0] == addresses):
            return found[1]
        return None

    def _memo_slot(self, request: Request) -> tuple[dict[tuple[object, ...], _Memoised],
                                                     tuple[object, ...]]:
        """(the memo of the request's kind, its key): every field the decision reads
        but the addresses, with the source only where a rule is scoped by source."""
        kind = request.kind
        memo = (self._memo_connect if kind is _CONNECT else self._memo_http if kind is _HTTP
                else self._memo_other)
        source, identity = request.source, request.identity
        if source is not None:
            if identity is None and self._has_source_identities:
                identity = self.source_identity(canonical_ip(source))  # as `_decide` does
            if not self._source_scoped:
                source = None
        return memo, (request.host, request.uri, request.port, request.scheme,
                      request.protocol, request.callout_type,
                      kind if memo is self._memo_other else None, identity, source)

    def source_identity(self, source: IPAddress | None) -> str | None:
        """The identity whose `sources` hold `source` (the longest prefix wins), if any:
        the weakest way to tell who is calling, and the only one the DNS filter has."""
        if source is None or not self._has_source_identities:
            return None
        trie = self._source_ids_v6 if source.version == 6 else self._source_ids_v4
        return trie.get(source)

    def _decide(self, request: Request) -> Decision:
        if request.identity is None and self._has_source_identities \
                and request.source is not None:
            found = self.source_identity(canonical_ip(request.source))
            if found is not None:
                request = dataclasses.replace(request, identity=found)
        if self.require_identity and not request.identity and (
                request.kind is _HTTP or request.kind is _CONNECT or request.kind is _DNS):
            shown = request.uri or request.host
            return self._deny(_L_GUARD, "guard:identity-required",
                              f"{shown}: the policy requires an authenticated workload "
                              "identity and the request has none", shown, request.port)
        decision = self._decide_rules(request)
        if self._gateway_callouts and (request.kind is _CONNECT or request.kind is _HTTP) \
                and decision.port in CALLOUT_PORTS:
            return self._gateway_callout(request, decision)
        return decision

    def _gateway_callout(self, request: Request, decision: Decision) -> Decision:
        """A proxied connection under `callout_enforcement: gateway`: the callout layers
        decide it as each callout type its port may carry. A denial by a rule, the guard
        or a service endpoint policy stands; of the types, one refusal by a matching entry
        wins over any allow (the gateway cannot tell which type the caller meant); no
        matching entry leaves the rules' decision."""
        if not decision.allowed and decision.layer is not _L_DEFAULT:
            return decision
        host_text = decision.destination.rpartition(":")[0] if decision.port else \
            decision.destination
        try:
            host = normalize_host(host_text)
        except InvalidHost:
            return decision
        allowed: Decision | None = None
        for callout_type in CALLOUT_PORTS[decision.port or 0]:
            verdict = self._decide_callout(
                Request(kind=_CALLOUT, host=host.name, callout_type=callout_type),
                None, host, None)
            if verdict.layer is _L_DEFAULT:
                continue  # no entry of this type matches
            if not verdict.allowed:
                return Decision(_DENY, verdict.layer, verdict.rule, verdict.reason,
                                decision.destination, decision.port, verdict.report_only)
            allowed = allowed or verdict
        if allowed is not None and not decision.allowed:
            return Decision(_ALLOW, allowed.layer, allowed.rule, allowed.reason,
                            decision.destination, decision.port)
        return decision

    def _decide_rules(self, request: Request) -> Decision:
        url: URL | None = None
        port: int | None
        scheme: str | None
        try:
            if request.uri is None:
                host = normalize_host(request.host)
                port = request.port
                scheme = request.scheme
            else:
                url = parse_url(request.uri)
                host = url.host
                port = request.port or url.port or None
                scheme = url.scheme
        except InvalidHost as exc:  # step 1
            return self._deny(_L_GUARD, "guard:invalid-host", str(exc),
                              request.uri or request.host, request.port)
        kind = request.kind
        if kind is _HTTP:
            if scheme is None:
                scheme = "https" if port == 443 else "http"
            if port is None:
                port = 443 if scheme == "https" else 80
        if (kind is _CONNECT or kind is _HTTP or kind is _DNS) and (
                host.ip is None and not request.addresses):  # the hot path: a name, no L3
            name = host.name
            return self._decide_application(request, kind, host, url, scheme, port,
                                            f"{name}:{port}" if port else name, None, False)
        return self._evaluate(request, kind, host, url, scheme, port, False)

    def _evaluate(self, request: Request, kind: Kind, host: Host, url: URL | None,
                  scheme: str | None, port: int | None, enforced: bool) -> Decision:
        """Steps 2-7. With `enforced`, rules of report-only collections are skipped; that
        second pass runs only when such a rule decided the first one."""
        name = host.name
        target = f"{name}:{port}" if port else name
        # Step 2: the address guard, on every address the caller will connect to, and the
        # network rules for each of them (the L3 check of every kind).
        addresses = request.addresses or ((host.ip,) if host.ip is not None else ())
        net_allowed: _NetEntry | None = None
        if addresses:
            protocol, source, identity = request.protocol, request.source, request.identity
            # A request by name (not a flow): network rules only deny it by address, or
            # allow it when they opt in; trusted ranges lift the guard for it (step 5).
            by_name = host.ip is None and kind is not _FLOW
            # A flow to a name is matched by its address and by its name in one rule
            # order: the first rule that names either decides (as the kernel's sets of
            # DNS-learned addresses do), so an earlier FQDN deny is not passed over.
            by_fqdn = self._first_net(self._net_hosts.matches(name), protocol, port, source,
                                      enforced, identity) if (
                kind is _FLOW and host.ip is None and self._has_net_hosts) else None
            all_allowed = True
            for raw_ip in addresses:
                ip = canonical_ip(raw_ip)
                entries = self._ip_entries(ip) if self._has_net else []
                special = special_range(ip)
                trusted = False
                if special is not None and not any(
                        e.explicit and e.allow and not e.report_only
                        and e.applies(protocol, port, source, identity) for e in entries):
                    if not (by_name and self._trusted(ip)):
                        return self._deny(_L_GUARD, f"guard:{special}",
                                          f"{target} resolves to {ip} ({special} address); "
                                          "only a network rule naming its CIDR can allow it",
                                          target, port)
                    trusted = True  # through the guard; the name rules decide
                entry = self._first_net(entries, protocol, port, source, enforced, identity)
                if by_fqdn is not None and (entry is None or by_fqdn.order < entry.order):
                    entry = by_fqdn
                if entry is not None and not entry.allow:
                    return self._from_entry(entry, _L_NETWORK, target, port,
                                            self._reevaluate(request, kind, host, url, scheme,
                                                             port, entry))
                if entry is None or trusted or (by_name and not entry.names):
                    all_allowed = False
                elif net_allowed is None or entry.order < net_allowed.order:
                    net_allowed = entry
            if not all_allowed:
                net_allowed = None
        if kind is _CALLOUT:
            return self._decide_callout(request, url, host, port)
        if kind is _FLOW:
            if net_allowed is None and host.ip is None and self._has_net_hosts:
                net_allowed = self._first_net(self._net_hosts.matches(name), request.protocol,
                                              port, request.source, enforced, request.identity)
            if net_allowed is not None:
                return self._from_entry(net_allowed, _L_NETWORK, target, port,
                                        self._reevaluate(request, kind, host, url, scheme,
                                                         port, net_allowed))
            if (self._iothub and host.ip is None and request.protocol == "tcp"
                    and port in IOTHUB_PORTS):
                allowed = self._allowed_fqdn(name, target, port)
                if allowed is not None:
                    return allowed
            return self._default(target, port)
        return self._decide_application(request, kind, host, url, scheme, port, target,
                                        net_allowed, enforced)

    def _reevaluate(self, request: Request, kind: Kind, host: Host, url: URL | None,
                    scheme: str | None, port: int | None, entry: _Entry) -> Decision | None:
        if not entry.report_only:
            return None
        return self._evaluate(request, kind, host, url, scheme, port, True)

    def _decide_application(self, request: Request, kind: Kind, host: Host, url: URL | None,
                            scheme: str | None, port: int | None, target: str,
                            net_allowed: _NetEntry | None, enforced: bool) -> Decision:
        name = host.name
        # Section 6: storage hosts outside the service endpoint policy, before anything else
        # (even a network rule allowing the Storage service tag).
        if self._storage.active and host.ip is None:
            refusal = self._storage.refuse(name)
            if refusal is not None:
                return self._deny(_L_SEP, "service_endpoint", refusal, target, port)
        # Step 5: a flow already allowed by a network rule (by address or FQDN).
        if net_allowed is None and host.ip is None and self._has_net_hosts:
            net_allowed = self._first_net(self._net_hosts.matches(name), request.protocol,
                                          port, request.source, enforced, request.identity)
        if net_allowed is not None:
            return self._from_entry(net_allowed, _L_NETWORK, target, port,
                                    self._reevaluate(request, kind, host, url, scheme, port,
                                                     net_allowed))
        best: _AppEntry | None = None
        source, identity = request.source, request.identity
        for entries in self._apps.candidates(name):
            for entry in entries:
                if (best is None or entry.order < best.order) and not (
                        enforced and entry.report_only) and entry.applies(
                            kind, scheme, port, source, identity):
                    best = entry
        if best is not None:
            if best.report_only:
                return self._from_entry(best, _L_APPLICATION, target, port,
                                        self._evaluate(request, kind, host, url, scheme,
                                                       port, True))
            return self._from_entry(best, _L_APPLICATION, target, port)
        # Step 6: the allowed FQDN list, on the ports the cluster kind opens (a DNS
        # question has no port): 80 and 443, or IoT Hub's HTTPS, AMQP and Kafka.
        if kind is _DNS or (port in IOTHUB_PORTS and (kind is _CONNECT or scheme == "https")
                            if self._iothub else port in _ALLOWED_FQDN_PORTS):
            allowed = self._allowed_fqdn(name, target, port)
            if allowed is not None:
                return allowed
        return self._default(target, port)

    def _allowed_fqdn(self, name: str, target: str, port: int | None) -> Decision | None:
        """Step 6's allow, if `name` is on the allowed FQDN list of a restricted cluster."""
        if self.restricted and self._has_allowed_fqdns:
            for pattern in self._allowed_fqdns.matches(name):
                return Decision(_ALLOW, _L_ALLOWED_FQDN, f"allowed_fqdn:{pattern}",
                                f"{target} is in the allowed FQDN list", target, port)
        return None

    def _decide_callout(self, request: Request, url: URL | None, host: Host,
                        port: int | None) -> Decision:
        callout_type = (request.callout_type or "").lower()
        if url is not None:
            uri = url.match_string
        else:  # a bare host: the URI it stands for, in the form regexes are written for
            shown = f"[{host.name}]" if host.ip is not None and host.ip.version == 6 \
                else host.name
            uri = f"{request.scheme or 'https'}://{shown}{f':{port}' if port else ''}/"
        # Section 6 binds every request kind: a callout (e.g. external_data to a storage
        # account) is the exfiltration path Azure Machine Learning's "Configure data exfiltration
        # prevention" warns about.
        if self._storage.active and host.ip is None:
            refusal = self._storage.refuse(host.name)
            if refusal is not None:
                return self._deny(_L_SEP, "service_endpoint",
                                  f"Callout to '{uri}' is not allowed: {refusal} "
                                  f"{CALLOUT_ERROR}", host.name, port)
        matched = [(i, r, _L_IMMUTABLE) for i, r in self._immutable.matches(callout_type, uri)]
        matched += [(i, r, _L_CLUSTER) for i, r in self._cluster.matches(callout_type, uri)]
        chosen = next((m for m in matched if not m[1].can_call), None) or (
            matched[0] if matched else None)
        if chosen is not None:
            index, rule, layer = chosen
            rule_id = f"{layer.value}[{index}]"
            if rule.can_call:
                return Decision(_ALLOW, layer, rule_id,
                                f"{callout_type} callout to {uri} allowed by {rule_id} "
                                f"({rule.uri_regex})", host.name, port)
            return self._deny(layer, rule_id,
                              f"Callout to '{uri}' is not allowed by the callout policy "
                              f"({rule_id} forbids {callout_type}) {CALLOUT_ERROR}",
                              host.name, port)
        # While restricted, the allowed FQDN list covers every callout type but webapi.
        if self.restricted and callout_type != "webapi" and not self._iothub:
            for pattern in self._allowed_fqdns.matches(host.name):
                return Decision(_ALLOW, _L_ALLOWED_FQDN, f"allowed_fqdn:{pattern}",
                                f"{callout_type} callout to {uri}: {host.name} is in the "
                                "allowed FQDN list", host.name, port)
        return self._deny(_L_DEFAULT, "default",
                          f"Callout to '{uri}' is not allowed by the callout policy "
                          f"(no {callout_type or 'typed'} entry matches) {CALLOUT_ERROR}",
                          host.name, port)


class _StorageScope:
    """Which storage accounts service endpoint policies let a cluster reach (section 6)."""

    def __init__(self, policy: Policy, refs: References) -> None:
        self.active = bool(policy.service_endpoint_policies)
        entries = storage_entries(policy)
        globs: list[re.Pattern[str]] = []
        for sep_name, alias in entries.aliases:
            if alias not in refs.storage_aliases:
                seps = policy.service_endpoint_policies
                i = next(n for n, sep in enumerate(seps) if sep.name == sep_name)
                where = locate(policy, ("service_endpoint_policies", i, "aliases",
                                        seps[i].aliases.index(alias)))
                raise CompileError(f"{where}: unknown alias {alias!r} (service endpoint "
                                   f"policy {sep_name})",
                                   hint="`egressguard catalog list` shows the known "
                                        "storage aliases")
            globs.extend(re.compile(fnmatch.translate(g.lower()))
                         for g in refs.storage_aliases[alias])
        self.names = entries.accounts(refs.storage_accounts)
        self.globs = tuple(globs)

    def refuse(self, host: str) -> str | None:
        """A denial reason if `host` is a storage account outside the policy, or a name
        under a storage service's domain that names no account (`x.privatelink.blob...`,
        which could lead anywhere), else None."""
        found = _STORAGE_HOST.fullmatch(host)
        if found is None:
            if _STORAGE_DOMAIN.search(host) is not None:
                return (f"{host} is under a storage service's domain but is no storage "
                        "account host the service endpoint policy can check")
            return None
        account = found.group("account")
        if account in self.names or any(g.fullmatch(account) for g in self.globs):
            return None
        return (f"storage account {account!r} ({host}) is not in the cluster's service "
                "endpoint policy")


def _where(policy: Policy, rule_id: RuleId, member: str, value: str) -> str:
    """The file, line and path of `value` in `member` of the rule `rule_id` (errors only:
    a linear search; the path alone where the source text is not known)."""
    field = f"{rule_id.kind.value}_rule_collections"
    for i, collection in enumerate(getattr(policy, field)):
        if collection.name != rule_id.collection:
            continue
        for j, rule in enumerate(collection.rules):
            if rule.name == rule_id.rule and value in getattr(rule, member):
                return locate(policy, (field, i, "rules", j, member,
                                       list(getattr(rule, member)).index(value)))
    return str(rule_id)


def _merge_ancestors(trie: pytricia.PyTricia) -> None:
    """Give every prefix the entries of the prefixes that contain it, so that a lookup
    needs only the longest match (no walk up the tree per decision)."""
    own = {key: list(trie[key]) for key in trie}
    for key in own:
        merged = list(own[key])
        parent = trie.parent(key)
        while parent is not None:
            merged.extend(own[parent])
            parent = trie.parent(parent)
        trie[key] = merged


def compile_policy(policy: Policy, refs: References | None = None) -> Snapshot:
    """Compile a validated policy into a `Snapshot`; raises `CompileError` on unknown
    references (service tags, FQDN tags, aliases)."""
    return Snapshot(policy, refs or References())
