"""Policy -> `squid.conf` access rules (`acl` + `http_access`), first match wins as in
the engine.

How each part maps (the agreement test runs the output in a real Squid):

* address guard: `acl eg_guard dst <special ranges>` denied first. Squid resolves the name
  (as the gateway does) and denies when an address is special. An explicit CIDR rule that
  lifts the guard in egressguard is not carried over (narrower; warned).
* network rules: TCP only matters to a proxy. Deny rules become `http_access deny` on
  `dst`/names and ports, before the name rules, as the engine checks them first. Allow
  rules are left out (warned): Squid has no "allow this address but still check names".
* service endpoint policies: storage hosts outside the listed accounts denied with a
  `dstdom_regex` pair, before the application rules.
* application rules, in order: names as `dstdomain -n` (`a.b.com` exact, `.b.com` apex and
  below, Squid's own form) or `dstdom_regex -n -i` (`*.b.com` strict subdomains, label
  globs); `CONNECT` by port, other requests by `proto` and port.
* allowed FQDN list (restricted only): ports 80 and 443; then `deny all` while restricted,
  `allow all` otherwise.

Squid does not compare a tunnel's TLS SNI with the CONNECT host unless `ssl_bump peek` is
set up (it needs a CA certificate), so the fronting check stays with egressguard; said in
the header.
"""

from __future__ import annotations

import ipaddress
import re

from egressguard.engine import References
from egressguard.export.base import (
    Export,
    ExportError,
    Gaps,
    canonical,
    for_everyone,
    header,
    policy_wide_gaps,
    special_networks,
)
from egressguard.policy.model import Policy
from egressguard.policy.rules import (
    AppRule,
    DestKind,
    NetRule,
    application_rules,
    expand_fqdn_tags,
    network_rules,
    storage_entries,
)

_STORAGE_SUFFIX = (r"(blob|queue|table|file|dfs|web)\.core\."
                   r"(windows|chinacloudapi|usgovcloudapi|cloudapi)\.(net|cn|de)$")
_STORAGE_TAIL = rf"(-secondary)?\.(z[0-9]+\.)?{_STORAGE_SUFFIX}"
NOTES = ("Squid does not check a tunnel's TLS SNI against the CONNECT host without ssl_bump "
         "peek (needs a CA); keep egressguard's fronting check in the path for that.",)


def _dots(text: str) -> str:
    return text.replace(".", r"\.")


def host_acl(pattern: str) -> tuple[str, str] | None:
    """(ACL type and flags, value) matching exactly the hosts `pattern` matches, or None
    for `*` (every host) ... and for IPv6 literals, which Squid spells differently."""
    if pattern == "*":
        return None
    if pattern.startswith("*."):
        return "dstdom_regex -n -i", rf"^.+\.{_dots(pattern[2:])}$"
    if "*" in pattern:
        label, _, parent = pattern.partition(".")
        return "dstdom_regex -n -i", rf"^{_dots(label).replace('*', '[^.]*')}\.{_dots(parent)}$"
    return "dstdomain -n", pattern


class _Writer:
    def __init__(self) -> None:
        self.acls: list[str] = []
        self.access: list[str] = []

    def acl(self, name: str, kind: str, values: list[str]) -> str:
        self.acls += [f"acl {name} {kind} {v}" for v in values]
        return name

    def rule(self, action: str, *acls: str, comment: str = "") -> None:
        if comment:
            self.access.append(f"# {comment}")
        self.access.append(f"http_access {action} {' '.join(acls) or 'all'}".rstrip())


def _ports(ranges: list[tuple[int, int]]) -> list[str]:
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]


def _name_acls(w: _Writer, prefix: str, patterns: list[str], allow: bool, subject: str,
               gaps: Gaps) -> list[str] | None:
    """ACL names whose union is the patterns' hosts; None when `*` is among them."""
    exact: list[str] = []
    regex: list[str] = []
    dst: list[str] = []
    for pattern in dict.fromkeys(patterns):
        if pattern == "*":
            return None
        if ":" in pattern:  # an IPv6 literal target
            if allow:
                gaps.add(subject, f"IPv6 literal {pattern} left out (Squid host ACLs)")
            else:
                dst.append(pattern)
            continue
        found = host_acl(pattern)
        assert found is not None
        (regex if found[0].startswith("dstdom_regex") else exact).append(found[1])
    # Squid refuses a name next to a `.zone` that covers it in one dstdomain ACL.
    zones = [e for e in exact if e.startswith(".")]
    exact = [e for e in exact if not any(
        e != z and (e == z[1:] or e.endswith(z)) for z in zones)]
    out = []
    if exact:
        out.append(w.acl(f"{prefix}_names", "dstdomain -n", exact))
    if regex:
        out.append(w.acl(f"{prefix}_re", "dstdom_regex -n -i", regex))
    if dst:
        out.append(w.acl(f"{prefix}_dst", "dst", dst))
    return out


def _sources(w: _Writer, prefix: str, sources: tuple[object, ...]) -> list[str]:
    return [w.acl(f"{prefix}_src", "src", [str(s) for s in sources])] if sources else []


def _network_deny(w: _Writer, rule: NetRule, refs: References, gaps: Gaps) -> None:
    if not (rule.protocols & {"tcp", "any"}):
        return  # UDP/ICMP never reach a proxy
    prefix = f"eg_n{rule.order}"
    comment = f"{rule.id} (deny)"
    ports = [] if rule.all_ports else [w.acl(f"{prefix}_port", "port", _ports(
        list(rule.ports)))]
    src = _sources(w, prefix, rule.sources)
    addrs: list[str] = []
    hosts: list[str] = []
    anywhere = False
    for dest in rule.destinations:
        if dest.kind is DestKind.ANY:
            anywhere = True
        elif dest.kind is DestKind.NET:
            addrs.append(dest.text)
        elif dest.kind is DestKind.TAG:
            if dest.text not in refs.service_tags:
                raise ExportError(f"network rule {rule.id}: unknown service tag {dest.text!r}")
            addrs += list(refs.service_tags[dest.text])
        else:
            hosts.append(dest.text)
    if anywhere:
        w.rule("deny", *ports, *src, comment=comment)
        return
    if addrs:
        w.rule("deny", w.acl(f"{prefix}_dst", "dst", addrs), *ports, *src, comment=comment)
    names = _name_acls(w, prefix, hosts, False, str(rule.id), gaps) if hosts else []
    for acl in names or []:
        w.rule("deny", acl, *ports, *src, comment=comment)


def _storage(w: _Writer, policy: Policy, refs: References, gaps: Gaps) -> None:
    entries = storage_entries(policy)
    regexes: list[str] = []
    for sep_name, alias in entries.aliases:
        if alias not in refs.storage_aliases:
            raise ExportError(f"service endpoint policy {sep_name}: unknown alias "
                              f"{alias!r}")
        for glob in refs.storage_aliases[alias]:
            if not re.fullmatch(r"[a-z0-9*?]+", glob.lower()):
                gaps.add(f"service endpoint policy {sep_name}",
                         f"alias account glob {glob!r} left out")
                continue
            regexes.append(glob.lower().replace("*", "[a-z0-9]*").replace("?", "[a-z0-9]"))
    names = entries.accounts(refs.storage_accounts)
    # Every name under a storage service's domain, as the engine counts them: one that is
    # not a plain account host (x.privatelink.blob...) is refused, not let through.
    w.acl("eg_storage", "dstdom_regex -n -i", [rf"(^|\.){_STORAGE_SUFFIX}"])
    allowed = sorted(names) + regexes
    if allowed:
        w.acl("eg_storage_ok", "dstdom_regex -n -i",
              [rf"^({'|'.join(allowed)}){_STORAGE_TAIL}"])
        w.rule("deny", "eg_storage", "!eg_storage_ok",
               comment="service endpoint policies: storage accounts outside them")
    else:
        w.rule("deny", "eg_storage", comment="service endpoint policies: no account listed")


def _application(w: _Writer, rule: AppRule, refs: References, gaps: Gaps) -> None:
    patterns, unknown = expand_fqdn_tags(rule, refs.fqdn_tags)
    if unknown:
        raise ExportError(f"application rule {rule.id}: unknown FQDN tag {unknown[0]!r}")
    prefix = f"eg_a{rule.order}"
    action = "allow" if rule.allow else "deny"
    names = _name_acls(w, prefix, [canonical(p) for p in patterns], rule.allow, str(rule.id),
                       gaps)
    if names == []:
        return
    hosts: list[list[str]] = [[]] if names is None else [[n] for n in names]
    src = _sources(w, prefix, rule.sources)
    any_port = any(port is None for _, port in rule.specs)
    connect_ports = sorted({port for _, port in rule.specs if port is not None})
    connect = ["eg_connect"] if any_port else ["eg_connect", w.acl(
        f"{prefix}_cport", "port", [str(p) for p in connect_ports])]
    plain: list[list[str]] = []
    for scheme, proto in (("http", "eg_http"), ("https", "eg_https")):
        ports = [port for s, port in rule.specs if s == scheme]
        if None in ports:
            plain.append([proto])
        elif ports:
            plain.append([proto, w.acl(f"{prefix}_{scheme}_port", "port",
                                       [str(p) for p in sorted({p for p in ports if p})])])
    comment = f"{rule.id} ({action})"
    for host in hosts:
        w.rule(action, *host, *connect, *src, comment=comment)
        comment = ""
        for scheme_acls in plain:
            w.rule(action, *host, "!eg_connect", *scheme_acls, *src)


def export_squid(policy: Policy, refs: References | None = None, source: str = "") -> Export:
    """The Squid access rules for `policy` (pure)."""
    refs = refs or References()
    gaps = Gaps()
    policy_wide_gaps(policy, "squid", gaps)
    w = _Writer()
    w.acl("eg_connect", "method", ["CONNECT"])
    w.acl("eg_http", "proto", ["HTTP"])
    w.acl("eg_https", "proto", ["HTTPS"])
    w.acl("eg_guard", "dst", [str(n) for n in special_networks()])
    w.rule("deny", "eg_guard", comment="address guard: special-purpose destinations")
    nets = [r for r in for_everyone(network_rules(policy), gaps) if not r.report_only]
    for rule in nets:
        if rule.allow:
            if rule.protocols & {"tcp", "any"}:
                gaps.add(rule.id, "network allow rule left out (Squid decides names; "
                                  "enforce address rules with nftables)")
            continue
        _network_deny(w, rule, refs, gaps)
    for rule in nets:
        if rule.allow and any(d.explicit and ipaddress.ip_network(d.text).overlaps(s)
                              for d in rule.destinations if d.kind is DestKind.NET
                              for s in special_networks()
                              if s.version == ipaddress.ip_network(d.text).version):
            gaps.add(rule.id, "names special addresses: Squid keeps them denied")
    if policy.service_endpoint_policies:
        _storage(w, policy, refs, gaps)
    for app in for_everyone(application_rules(policy), gaps):
        if not app.report_only:
            _application(w, app, refs, gaps)
    if policy.restrict_outbound_network_access and policy.allowed_fqdn_list:
        names = _name_acls(w, "eg_fqdn", list(policy.allowed_fqdn_list), True,
                           "allowed_fqdn_list", gaps)
        w.acl("eg_fqdn_port", "port", ["80", "443"])
        for name in names if names is not None else ["all"]:
            w.rule("allow", name, "eg_fqdn_port", comment="allowed FQDN list")
    default = "deny" if policy.restrict_outbound_network_access else "allow"
    w.rule(default, "all", comment=f"default: {default}")
    body = "\n".join(w.acls) + "\n\n" + "\n".join(w.access) + "\n"
    warnings = tuple(gaps.items)
    return Export("squid", header("#", "squid", source, warnings, NOTES) + "\n" + body,
                  warnings)
