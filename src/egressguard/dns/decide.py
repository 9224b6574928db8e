"""What the DNS filter decides, without I/O: the question before forwarding, then the
answer the upstream gave.

Question: the name is decided as a `dns` request. Answer: every address handed to the
client (A/AAAA in any section, HTTPS/SVCB hints) goes through the address guard with the
question name, which is what stops DNS rebinding (an allowed name answering 127.0.0.1 or
169.254.169.254); names the answer leads to (CNAME/DNAME targets, record owners) are
decided according to `CnameMode`:

* ``addresses`` - only the addresses are checked; CNAME targets are not names the client
  asked for, and CDN chains (`mcr.microsoft.com` -> `*.azureedge.net`) stay working.
* ``rules`` (default) - as ``addresses``, and a chain name that a rule or the guard denies
  explicitly (a deny rule, a service endpoint policy, an invalid name) refuses the answer;
  a name that is merely not allowed (the restricted default) is tolerated. This stops an
  allowed name from aliasing a forbidden storage account or a denied host.
* ``strict`` - every name in the chain must be allowed on its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import DNSLabel, DNSRecord

from egressguard.dns.wire import BadName, Scanned, addresses, chain_names, name_text
from egressguard.enforce.checkpoint import guard_decision
from egressguard.engine import Decision, InvalidHost, Kind, Layer, Request, Snapshot
from egressguard.engine import normalize_host as normalize_host
from egressguard.engine.normalize import IPAddress


class CnameMode(enum.StrEnum):
    ADDRESSES = "addresses"
    RULES = "rules"
    STRICT = "strict"


@dataclass(frozen=True, slots=True)
class NameDecision:
    """A decision about one name, with the normalised name it was made for."""

    host: str
    decision: Decision
    addresses: tuple[IPAddress, ...] = ()


Decide = Callable[[Snapshot, Request], Decision]


def _engine(snapshot: Snapshot, request: Request) -> Decision:
    return snapshot.decide(request)


def _guard_deny(snapshot: Snapshot, name: str, reason: str) -> Decision:
    # A malformed name is a refusal minted outside the engine: the checkpoint's guard
    # decision (report-only when the policy is, like every other refusal).
    return guard_decision(snapshot, "guard:invalid-host", reason, name)


def decide_name(snapshot: Snapshot, label: DNSLabel, source: IPAddress | None = None,
                addrs: tuple[IPAddress, ...] = (), decide: Decide = _engine) -> NameDecision:
    """Decide a DNS name as it is on the wire (`label`), optionally with the addresses an
    answer gives it. A name that normalisation would change in any way other than letter
    case is refused: the upstream resolves the spelling we forward, so it must be the
    spelling we decided. `decide` is the engine call (the filter passes its checkpoint's
    memoised `decide_in`)."""
    try:
        wire = name_text(label)
    except BadName as exc:
        shown = str(label).rstrip(".")
        return NameDecision(shown, _guard_deny(snapshot, shown, str(exc)))
    try:
        host = normalize_host(wire)
    except InvalidHost as exc:
        return NameDecision(wire.lower(), _guard_deny(snapshot, wire.lower(), str(exc)))
    if host.ip is None and host.name != wire.lower():
        return NameDecision(host.name, _guard_deny(
            snapshot, wire, f"invalid host: {wire!r} normalises to {host.name!r}"))
    decision = decide(snapshot, Request(kind=Kind.DNS, host=wire, protocol="udp",
                                        addresses=addrs, source=source))
    return NameDecision(host.name, decision, addrs)


def _counts(decision: Decision, mode: CnameMode) -> bool:
    """Whether a chain name's denial refuses the answer under `mode`."""
    if decision.allowed:
        return False
    return mode is CnameMode.STRICT or decision.layer is not Layer.DEFAULT


def check_answer(snapshot: Snapshot, query_name: DNSLabel, answer: DNSRecord | Scanned,
                 mode: CnameMode = CnameMode.RULES,
                 source: IPAddress | None = None, decide: Decide = _engine) -> NameDecision:
    """Decide an upstream answer to an allowed question (see the module docstring).

    Returns the decision that counts: the first refusal found (which may be report-only,
    then `permitted`), else the question name decided with the answer's addresses.
    """
    addrs = addresses(answer)
    final = decide_name(snapshot, query_name, source, addrs, decide)
    if not final.decision.permitted or mode is CnameMode.ADDRESSES:
        return final
    seen = {query_name}
    for name in chain_names(answer):
        if name in seen:
            continue
        seen.add(name)
        hop = decide_name(snapshot, name, source, decide=decide)
        if not _counts(hop.decision, mode):
            continue
        refused = NameDecision(final.host, Decision(
            hop.decision.verdict, hop.decision.layer, hop.decision.rule,
            f"{final.host} leads to {hop.host}: {hop.decision.reason}",
            destination=final.host, report_only=hop.decision.report_only), addrs)
        if not refused.decision.permitted:
            return refused
        if final.decision.allowed:
            final = refused  # report-only: keep the first would-be refusal on record
    return final
