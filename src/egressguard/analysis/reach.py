"""What a policy change makes reachable and unreachable (pure).

Both versions are decided over the same cells (`egressguard.analysis.cells`): every
cell whose outcome flips is a region that opens or closes, named by its class (a host
pattern class, a CIDR or address range), its ports (adjacent port intervals merged),
its source range and, for names, the address class it resolves into. Callout entries
are compared as entries (regex languages are not diffed): an allow entry that appears
is reported as opened, one that goes as closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egressguard.analysis.cells import Cell, cells
from egressguard.engine import References, compile_policy
from egressguard.policy.model import Policy


@dataclass
class Reach:
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    cells: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"opened": self.opened, "closed": self.closed, "cells": self.cells}

    def text(self) -> str:
        if not self.opened and not self.closed:
            return f"no change in reachability ({self.cells} request classes compared)\n"
        lines = [f"+ {r}" for r in self.opened] + [f"- {r}" for r in self.closed]
        return "\n".join(lines) + (f"\n{len(self.opened)} regions become reachable, "
                                   f"{len(self.closed)} unreachable\n")


def _ports(spans: list[tuple[int, int]]) -> str:
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    if not text:
        return ""
    if text == "1-65535":
        return " any port"
    return f" port{'s' if len(spans) > 1 or spans[0][0] != spans[0][1] else ''} {text}"


def _group(found: list[Cell]) -> list[str]:
    """One line per region: port intervals merged; a variant (resolving into an address
    class, from a source range) dropped when the plain region with the same ports is
    listed; kinds with the same region joined."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, int]]] = {}
    for cell in found:
        spans = groups.setdefault((cell.kind, cell.destination, cell.address, cell.source), [])
        if cell.ports is not None:
            if spans and spans[-1][1] + 1 == cell.ports[0]:
                spans[-1] = (spans[-1][0], cell.ports[1])
            else:
                spans.append(cell.ports)
    kinds: dict[tuple[str, str, str, str], list[str]] = {}
    for (kind, dest, address, source), spans in groups.items():
        ports = _ports(spans)
        if (address or source != "any") and groups.get((kind, dest, "", "any")) == spans:
            continue
        kinds.setdefault((dest, address, source, ports), []).append(kind)
    out = []
    for (dest, address, source, ports), names in kinds.items():
        text = f"{','.join(names)} {dest}"
        if address:
            text += f" resolving into {address}"
        text += ports
        if source != "any":
            text += f" from {source}"
        out.append(text)
    return out


def reach_diff(old: Policy, new: Policy, refs: References | None = None) -> Reach:
    """What `new` permits that `old` does not (opened), and the reverse (closed).
    Raises `cells.TooLarge` when the two cut the space into too many cells."""
    refs = refs or References()
    a, b = compile_policy(old, refs), compile_policy(new, refs)
    opened: list[Cell] = []
    closed: list[Cell] = []
    count = 0
    for cell in cells((old, new), refs):
        count += 1
        before, after = a.decide(cell.request).permitted, b.decide(cell.request).permitted
        if after and not before:
            opened.append(cell)
        elif before and not after:
            closed.append(cell)
    result = Reach(_group(opened), _group(closed), count)
    for rows, target in ((_allows(new) - _allows(old), result.opened),
                         (_allows(old) - _allows(new), result.closed)):
        target.extend(f"callout {t} matching {r!r}" for t, r in sorted(rows))
    return result


def _allows(policy: Policy) -> set[tuple[str, str]]:
    rows = ([] if policy.restrict_outbound_network_access else
            list(policy.immutable_callouts)) + list(policy.callouts)
    return {(r.callout_type, r.uri_regex) for r in rows if r.can_call}
