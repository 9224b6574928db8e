"""Is everything policy P lets through also let through by ceiling C?

The method, in two parts:

1. **Requests with a destination** (http/https URLs, CONNECT tunnels, DNS questions,
   tcp/udp/icmp flows, by name or IP literal, with or without a resolved address and a
   source): `egressguard.analysis.cells` cuts the request space into cells by every
   boundary either policy mentions (host patterns including label globs, CIDRs and
   service-tag prefixes, the address guard's ranges, port ranges, protocols, source
   CIDRs). Inside a cell neither policy can tell two requests apart, so deciding one
   representative per cell with the real engine decides the whole cell: P is contained
   in C over these kinds iff no cell is permitted by P and refused by C. That is an
   exhaustive symbolic check, not sampling; a failing cell's representative is the
   counterexample, already confirmed by `Snapshot.decide` on both policies.
2. **Callouts**, whose URIs are matched by RE2 regexes (search semantics, deny wins over
   allow across both layers, then the allowed-FQDN fallback while restricted): regular
   language containment is decidable in principle but not by RE2, so the prover uses a
   sound sufficient condition: every allow entry of P appears (same regex, a type C's
   entry covers) among C's allow entries, every deny entry of C appears among P's deny
   entries, and P's allowed-FQDN fallback is covered by C's. When that fails it tries
   to build a concrete URI from P's uncovered regex; if the engine confirms it, that is
   the counterexample, else the answer is "unknown" (could not prove containment), which
   a strict caller refuses.

Pure: no I/O. Service endpoint policies narrow storage hosts by a pattern the cells do
not cut along; when C has one that differs from P's the answer is "unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from egressguard.analysis.cells import TooLarge, cells, name_classes
from egressguard.analysis.regexgen import sample
from egressguard.engine import Kind, References, Request, Snapshot, compile_policy
from egressguard.policy.model import KNOWN_CALLOUT_TYPES, CalloutRule, Policy

Status = Literal["contained", "exceeds", "unknown"]


@dataclass(frozen=True)
class Containment:
    """The prover's answer. `counterexample` (when `exceeds`) is a `simulate` line that
    P permits and C refuses; `reasons` say why the answer is `unknown`."""

    status: Status
    counterexample: str | None = None
    detail: str = ""
    reasons: tuple[str, ...] = ()
    cells: int = 0

    def refuses(self, strict: bool) -> bool:
        """Whether a write gated by this answer must be refused."""
        return self.status == "exceeds" or (strict and self.status == "unknown")

    def message(self) -> str:
        if self.status == "contained":
            return f"contained in the ceiling ({self.cells} request classes checked)"
        if self.status == "exceeds":
            return f"exceeds the ceiling: {self.detail}\ncounterexample: {self.counterexample}"
        return "could not prove containment in the ceiling: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "counterexample": self.counterexample,
                "detail": self.detail, "reasons": list(self.reasons), "cells": self.cells}


@dataclass
class _Effective:
    allow: list[CalloutRule] = field(default_factory=list)
    deny: list[CalloutRule] = field(default_factory=list)


def _callout_layers(policy: Policy) -> _Effective:
    rows = ([] if policy.restrict_outbound_network_access else
            list(policy.immutable_callouts)) + list(policy.callouts)
    out = _Effective()
    for row in rows:
        (out.allow if row.can_call else out.deny).append(row)
    return out


def _covers(outer: CalloutRule, inner: CalloutRule) -> bool:
    """`outer` matches at least every (type, uri) `inner` matches."""
    return outer.uri_regex == inner.uri_regex and outer.callout_type in (
        "*", inner.callout_type)


def permits(snapshot: Snapshot, request: Request) -> bool:
    return snapshot.decide(request).permitted


def contains(policy: Policy, ceiling: Policy, refs: References | None = None) -> Containment:
    """Decide whether every request `policy` permits, `ceiling` permits too."""
    refs = refs or References()
    p_snap, c_snap = compile_policy(policy, refs), compile_policy(ceiling, refs)
    reasons: list[str] = []
    if ceiling.service_endpoint_policies and (
            ceiling.service_endpoint_policies != policy.service_endpoint_policies):
        reasons.append("the ceiling's service endpoint policies differ from the policy's "
                       "(storage account scopes are not compared)")
    count = 0
    try:
        for cell in cells((policy, ceiling), refs):
            count += 1
            if permits(p_snap, cell.request) and not permits(c_snap, cell.request):
                return Containment("exceeds", cell.line,
                                   f"{cell.region()} is allowed by the policy "
                                   f"({p_snap.decide(cell.request).rule}) and denied by the "
                                   f"ceiling ({c_snap.decide(cell.request).reason})",
                                   cells=count)
    except TooLarge as exc:
        reasons.append(str(exc))
    found = _callouts(policy, ceiling, refs, p_snap, c_snap, reasons)
    if found is not None:
        return Containment("exceeds", found[0], found[1], cells=count)
    if reasons:
        return Containment("unknown", reasons=tuple(reasons), cells=count)
    return Containment("contained", cells=count)


def _callouts(policy: Policy, ceiling: Policy, refs: References, p_snap: Snapshot,
              c_snap: Snapshot, reasons: list[str]) -> tuple[str, str] | None:
    """A confirmed callout counterexample (line, detail), else None; appends to
    `reasons` what could not be proved."""
    mine, theirs = _callout_layers(policy), _callout_layers(ceiling)
    for entry in mine.allow:
        if any(_covers(c, entry) for c in theirs.allow):
            continue
        found = _callout_example(entry, p_snap, c_snap)
        if found is not None:
            return found, (f"callout entry {entry.callout_type} {entry.uri_regex!r} allows "
                           "what the ceiling denies")
        reasons.append(f"callout entry {entry.callout_type} {entry.uri_regex!r} has no "
                       "identical allow entry in the ceiling")
    for entry in theirs.deny:
        if not any(_covers(p, entry) for p in mine.deny):
            reasons.append(f"the ceiling's callout deny entry {entry.callout_type} "
                           f"{entry.uri_regex!r} is not in the policy")
    if policy.restrict_outbound_network_access and policy.allowed_fqdn_list:
        for name, _desc in name_classes(list(policy.allowed_fqdn_list)
                                        + list(ceiling.allowed_fqdn_list)):
            request = Request.from_url(f"https://{name}/", kind=Kind.CALLOUT,
                                       callout_type="sql")
            if permits(p_snap, request) and not permits(c_snap, request):
                return (f"sql https://{name}/",
                        f"{name} is in the policy's allowed FQDN list (a callout fallback) "
                        "and the ceiling denies the callout")
    return None


def _callout_example(entry: CalloutRule, p_snap: Snapshot, c_snap: Snapshot) -> str | None:
    uri = sample(entry.uri_regex)
    if uri is None:
        return None
    types = [entry.callout_type] if entry.callout_type != "*" else sorted(
        KNOWN_CALLOUT_TYPES - {"*"})
    for callout_type in types:
        request = Request.from_url(uri, kind=Kind.CALLOUT, callout_type=callout_type)
        if permits(p_snap, request) and not permits(c_snap, request) and re.search(
                r"\s", uri) is None:
            return f"{callout_type} {uri}"
    return None


def check_arguments(line: str) -> list[str]:
    """The `egressguard check` arguments that decide the `simulate` line `line`, so a
    counterexample can be confirmed by hand (`egressguard check ARGS --policy FILE`)."""
    words = line.split()
    args: list[str] = []
    head = words[0].lower()
    if head in ("http", "connect", "dns", "flow"):
        args += ["--kind", head]
        words = words[1:]
    elif "://" not in head:
        args += ["--type", head]
        words = words[1:]
    target = words[0]
    if target.lower().endswith(("/tcp", "/udp", "/icmp")) and "--kind" in args \
            and "flow" in args:
        target, _, protocol = target.rpartition("/")
        args += ["--protocol", protocol]
    for option in words[1:]:
        key, _, value = option.partition("=")
        for item in value.split(",") if key == "address" else [value]:
            args += [f"--{key}", item]
    return [target, *args]
