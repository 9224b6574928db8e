"""Rules the evaluation order makes dead, and allow/deny rules that overlap.

The engine takes the first applicable rule (semantics §4): a rule every request of which
an earlier rule already takes is never reached (`shadowed-rule`); a deny rule that shares
some hosts with an earlier allow rule does not apply to those hosts (`allow-deny-overlap`),
which is how "deny evil.blob... after allow *.blob..." quietly fails. A rule scoped to
identities takes only their requests: it shadows or pre-empts a later rule only for the
callers both apply to, and a rule that applies to nobody takes nothing (and is reported
as such by the analyser, not here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from egressguard.analysis.findings import Finding, Severity
from egressguard.analysis.inventory import AppRule, Destination, NetRule, Network
from egressguard.analysis.patterns import Atom, _atom_covers, atoms, overlap_witness
from egressguard.policy.model import Action

_MAX_OVERLAPS_PER_RULE = 3


def _within(inner: Network, outer: Network) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _sources_cover(outer: Sequence[Network], inner: Sequence[Network]) -> bool:
    if not outer:
        return True
    if not inner:
        return False
    return all(any(_within(i, o) for o in outer) for i in inner)


def _sources_meet(a: Sequence[Network], b: Sequence[Network]) -> bool:
    if not a or not b:
        return True
    return any(x.version == y.version and x.overlaps(y)
               for x in a for y in b)


def _callers_cover(outer: frozenset[str], inner: frozenset[str]) -> bool:
    """Every caller `inner` applies to, `outer` applies to (empty: every caller)."""
    return not outer or (bool(inner) and inner <= outer)


def _callers_meet(a: frozenset[str], b: frozenset[str]) -> bool:
    return not a or not b or bool(a & b)


def _spec_covers(outer: tuple[str, int | None], inner: tuple[str, int | None]) -> bool:
    return outer[0] == inner[0] and (outer[1] is None or outer[1] == inner[1])


def _app_covers(earlier: AppRule, atom: Atom, spec: tuple[str, int | None] | None,
                later: AppRule) -> bool:
    if not _sources_cover(earlier.sources, later.sources) \
            or not _callers_cover(earlier.identities, later.identities):
        return False
    if spec is not None and not any(_spec_covers(s, spec) for s in earlier.specs):
        return False
    return any(_atom_covers(o, atom) for p in earlier.patterns for o in atoms(p))


def _app_shadowers(rule: AppRule, earlier: Sequence[AppRule]) -> list[AppRule] | None:
    """The earlier rules that together take every request `rule` applies to, or None."""
    if not rule.patterns or rule.unknown_tags:
        return None
    specs: Sequence[tuple[str, int | None] | None] = rule.specs or (None,)
    used: dict[str, AppRule] = {}
    for pattern in rule.patterns:
        for atom in atoms(pattern):
            for spec in specs:
                cover = next((e for e in earlier if _app_covers(e, atom, spec, rule)), None)
                if cover is None:
                    return None
                used[cover.rule_id] = cover
    return list(used.values())


def _specs_meet(a: AppRule, b: AppRule) -> bool:
    """Some http/https request both rules apply to (DNS lookups aside)."""
    return any(x[0] == y[0] and (x[1] is None or y[1] is None or x[1] == y[1])
               for x in a.specs for y in b.specs)


def _dead(rule_id: str, action: Action, by: list[str], what: str) -> Finding:
    loses_deny = action is Action.DENY
    return Finding(
        "shadowed-rule", Severity.MEDIUM if loses_deny else Severity.LOW, rule_id, what,
        "rule is never reached" + (": this deny never applies" if loses_deny else ""),
        f"Every request it matches is decided first by {', '.join(by)} (collections run by "
        "ascending priority, first match wins)" + (
            ", so the destinations it was written to block stay open." if loses_deny
            else "; it is dead weight that hides what the policy really allows."),
        "Move the rule to a collection with a lower priority number than "
        f"{by[0].partition(':')[2].partition('/')[0]}, or delete it.", related=tuple(by))


def app_order(rules: list[AppRule]) -> list[Finding]:
    out: list[Finding] = []
    rules = [r for r in rules if not r.nobody]
    for index, rule in enumerate(rules):
        earlier = rules[:index]
        shadowers = _app_shadowers(rule, earlier)
        if shadowers:
            out.append(_dead(rule.rule_id, rule.action, [s.rule_id for s in shadowers],
                             ", ".join(rule.patterns)))
            continue
        count = 0
        for first in earlier:
            if first.action is not Action.ALLOW or rule.action is not Action.DENY \
                    or not _sources_meet(first.sources, rule.sources) \
                    or not _callers_meet(first.identities, rule.identities) \
                    or not _specs_meet(first, rule):
                continue
            witness = _first_overlap(first, rule)
            if witness is None:
                continue
            out.append(_overlap(first.rule_id, rule.rule_id, witness[0],
                                witness[1]))
            count += 1
            if count >= _MAX_OVERLAPS_PER_RULE:
                break
    return out


def _first_overlap(first: AppRule, later: AppRule) -> tuple[str, str] | None:
    for a in first.patterns:
        for b in later.patterns:
            host = overlap_witness(a, b)
            if host is not None:
                return b, host
    return None


def _overlap(first_id: str, later_id: str, target: str, host: str) -> Finding:
    """A deny rule that an earlier allow rule pre-empts for some hosts. (An earlier deny
    carving an exception out of a later allow is the intended idiom, not reported.)"""
    return Finding(
        "allow-deny-overlap", Severity.MEDIUM, later_id, target,
        "deny rule overlaps an earlier allow rule",
        f"For hosts such as {host}, {first_id} decides first and allows the call: this "
        "deny does not protect them.",
        "Put deny rules in a collection with a lower priority number than the allow rules "
        "they carve exceptions from.", example=host, related=(first_id,))


# -- network rules --------------------------------------------------------------------


def _dest_covers(outer: Destination, inner: Destination) -> bool:
    if inner.kind == "host":
        return outer.kind == "host" and all(
            any(_atom_covers(o, i) for o in atoms(outer.text)) for i in atoms(inner.text))
    if outer.kind == "any":
        return True
    if inner.kind == "tag":
        return outer.kind == "tag" and outer.text == inner.text
    if outer.kind == "net" and inner.kind == "net":
        a, b = outer.network, inner.network
        return _within(b, a)
    return False


def _dest_witness(a: Destination, b: Destination) -> str | None:
    if a.kind == "host" or b.kind == "host":
        if a.kind == b.kind == "host":
            return overlap_witness(a.text, b.text)
        return None
    if a.kind == "any" or b.kind == "any":
        other = b if a.kind == "any" else a
        return str(other.network[0]) if other.kind == "net" else other.text
    if a.kind == b.kind == "tag":
        return a.text if a.text == b.text else None
    if a.kind == b.kind == "net":
        x, y = a.network, b.network
        if x.version == y.version and x.overlaps(y):
            return str(max(x, y, key=lambda n: n.prefixlen)[0])
    return None


def _net_covers(earlier: NetRule, dest: Destination, later: NetRule) -> bool:
    if not _sources_cover(earlier.sources, later.sources) \
            or not _callers_cover(earlier.identities, later.identities):
        return False
    if "any" not in earlier.protocols and ("any" in later.protocols
                                           or not later.protocols <= earlier.protocols):
        return False
    if not all(any(lo <= l2 and h2 <= hi for lo, hi in earlier.ports)
               for l2, h2 in later.ports):
        return False
    return any(_dest_covers(d, dest) for d in earlier.destinations)


def _net_meet(a: NetRule, b: NetRule) -> bool:
    protocols = "any" in a.protocols or "any" in b.protocols or bool(a.protocols & b.protocols)
    ports = any(lo <= h2 and l2 <= hi for lo, hi in a.ports for l2, h2 in b.ports)
    return protocols and ports and _sources_meet(a.sources, b.sources) \
        and _callers_meet(a.identities, b.identities)


def net_order(rules: list[NetRule]) -> list[Finding]:
    out: list[Finding] = []
    rules = [r for r in rules if not r.nobody]
    for index, rule in enumerate(rules):
        earlier = rules[:index]
        used: dict[str, None] = {}
        for dest in rule.destinations:
            cover = next((e for e in earlier if _net_covers(e, dest, rule)), None)
            if cover is None:
                break
            used[cover.rule_id] = None
        else:
            out.append(_dead(rule.rule_id, rule.action, list(used),
                             ", ".join(d.text for d in rule.destinations)))
            continue
        count = 0
        for first in earlier:
            if first.action is not Action.ALLOW or rule.action is not Action.DENY \
                    or not _net_meet(first, rule):
                continue
            hit = next(((b.text, w) for a in first.destinations for b in rule.destinations
                        if (w := _dest_witness(a, b)) is not None), None)
            if hit is None:
                continue
            out.append(_overlap(first.rule_id, rule.rule_id, *hit))
            count += 1
            if count >= _MAX_OVERLAPS_PER_RULE:
                break
    return out


def network_bypasses_app_denies(nets: list[NetRule], apps: list[AppRule]) -> list[Finding]:
    """A network allow for `*` (TCP) that opts in to names (`match_resolved_names`) is
    decided before every application deny rule once the gateway has resolved the name
    (semantics §4, step 5); without the opt-in it decides IP literals and flows only."""
    openers = [n for n in nets if n.action is Action.ALLOW and not n.sources and n.names
               and not n.nobody and any(d.kind == "any" for d in n.destinations)
               and ("any" in n.protocols or "tcp" in n.protocols)]
    out = []
    for app in apps:
        # The first opener for some caller the deny applies to.
        opener = next((n for n in openers if _callers_meet(n.identities, app.identities)),
                      None)
        if app.action is not Action.DENY or app.nobody or opener is None:
            continue
        ports = [p for _, p in app.specs] or [None]
        if all(p is None or any(lo <= p <= hi for lo, hi in opener.ports) for p in ports):
            out.append(_overlap(opener.rule_id, app.rule_id,
                                ", ".join(app.patterns),
                                next(iter(app.patterns), "*").lstrip("*.") or "any host"))
    return out

