"""What-if: every request of a list decided under the policy in force and a proposed one.

The request list is text, one request per line (`#` starts a comment)::

    https://mcr.microsoft.com/v2/                    # a URL alone: an http request
    sql https://myserver.database.windows.net        # a callout type, then the URI
    connect mystore.blob.core.windows.net:443        # a kind: http, connect, dns, flow
    dns evil.example
    flow 20.60.1.2:443 address=20.60.1.2
    flow 10.0.0.53:53 protocol=udp
    flow 20.50.1.1:1194/udp                          # a protocol suffix: /tcp, /udp, /icmp
    https://x.example/ address=203.0.113.9,203.0.113.10 source=10.1.0.4 port=8443

Options after the target: `address=IP[,IP...]` (what the name resolves to, for the
address guard and address-based network rules), `source=IP`, `port=N`,
`protocol=tcp|udp|icmp`. Each line is a `CheckQuery`, the model `egressguard check` and
`POST /v1/check` use, so a line decides as the same call asked there. Pure: parsing and
deciding only; the CLI and API read files and stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from egressguard.engine import Decision, Request, Snapshot
from egressguard.engine.query import parse_request_line
from egressguard.errors import InputError

_COMMENT = re.compile(r"\s#")  # a `#` after a space; `https://x/#frag` keeps its fragment


class RequestListError(InputError, ValueError):
    """A request list that cannot be read; `problems` are `(line, reason)`."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: line {n}: {why}" for n, why in problems))


@dataclass(frozen=True)
class Probe:
    line: int
    text: str  # the line without its comment
    request: Request

    @property
    def label(self) -> str:
        """What the request is, as written: `sql https://...`, `connect host:443`."""
        return self.text


def parse_requests(text: str, source: str = "<requests>") -> list[Probe]:
    """Parse a request list; raise `RequestListError` naming every bad line."""
    probes: list[Probe] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.split(raw, maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            probes.append(Probe(number, line, parse_request_line(line)))
        except ValueError as exc:
            problems.append((number, str(exc)))
    if problems:
        raise RequestListError(source, problems)
    if not probes:
        raise RequestListError(source, [(0, "no requests (every line is empty or a comment)")])
    return probes


def effect(decision: Decision) -> str:
    """`allow`, `deny`, or `deny (report-only)` when the denial is only recorded."""
    if decision.allowed:
        return "allow"
    return "deny (report-only)" if decision.report_only else "deny"


@dataclass(frozen=True)
class Row:
    probe: Probe
    current: Decision
    proposed: Decision

    @property
    def change(self) -> str:
        """`""` unchanged, `rule` (same verdict, another rule decides), else
        `allow -> deny` style."""
        before, after = effect(self.current), effect(self.proposed)
        if before != after:
            return f"{before} -> {after}"
        if (self.current.layer, self.current.rule) != (self.proposed.layer, self.proposed.rule):
            return "rule"
        return ""

    @property
    def changed(self) -> bool:
        return self.change not in ("", "rule")

    def as_dict(self) -> dict[str, object]:
        return {"line": self.probe.line, "request": self.probe.text,
                "kind": self.probe.request.kind.value,
                "current": self.current.as_dict(), "proposed": self.proposed.as_dict(),
                "change": self.change or "none", "changed": self.changed}


@dataclass(frozen=True)
class Simulation:
    current_source: str
    proposed_source: str
    rows: list[Row]

    @property
    def changed(self) -> list[Row]:
        return [r for r in self.rows if r.changed]

    def summary(self) -> str:
        changed = self.changed
        denied = sum(1 for r in changed if r.current.permitted and not r.proposed.permitted)
        allowed = sum(1 for r in changed if not r.current.permitted and r.proposed.permitted)
        if not changed:
            return f"no verdict changes in {len(self.rows)} requests"
        return (f"{len(changed)} of {len(self.rows)} verdicts change ({denied} newly denied, "
                f"{allowed} newly allowed)")

    def as_dict(self) -> dict[str, object]:
        return {"current": self.current_source, "proposed": self.proposed_source,
                "requests": len(self.rows), "changed": len(self.changed),
                "summary": self.summary(), "results": [r.as_dict() for r in self.rows]}


def simulate(probes: list[Probe], current: Snapshot, proposed: Snapshot,
             current_source: str = "current", proposed_source: str = "proposed"
             ) -> Simulation:
    """Decide every probe under both snapshots."""
    rows = [Row(p, current.decide(p.request), proposed.decide(p.request)) for p in probes]
    return Simulation(current_source, proposed_source, rows)
