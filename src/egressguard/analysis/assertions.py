"""Assertions: requests a policy must decide as its author expects (pure).

An assertion is one `simulate` line with `expect: allow | deny`; it holds when what an
enforcement point would do (`Decision.permitted`: a report-only denial lets the call
through) matches. Every write of a policy is refused while one fails, so a change can
never silently break a request someone wrote down as essential, or open one written
down as forbidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from egressguard.analysis.simulate import parse_requests
from egressguard.engine import Decision, Snapshot
from egressguard.policy.model import Action, Assertion, Policy


@dataclass(frozen=True)
class Outcome:
    assertion: Assertion
    decision: Decision

    @property
    def got(self) -> str:
        return "allow" if self.decision.permitted else "deny"

    @property
    def passed(self) -> bool:
        return self.got == self.assertion.expect.value

    def line(self) -> str:
        return (f"assertion {self.assertion.label!r} failed: {self.assertion.request} "
                f"expected {self.assertion.expect.value}, got {self.got} "
                f"({self.decision.reason})")

    def as_dict(self) -> dict[str, object]:
        return {"name": self.assertion.label, "request": self.assertion.request,
                "expect": self.assertion.expect.value, "got": self.got,
                "passed": self.passed, "rule": self.decision.rule,
                "reason": self.decision.reason}


def evaluate(policy: Policy, snapshot: Snapshot) -> list[Outcome]:
    """Every assertion of `policy`, decided by `snapshot` (the compiled `policy`)."""
    out = []
    for assertion in policy.assertions:
        probe = parse_requests(assertion.request, "assertion")[0]
        out.append(Outcome(assertion, snapshot.decide(probe.request)))
    return out


def failures(policy: Policy, snapshot: Snapshot) -> list[Outcome]:
    return [o for o in evaluate(policy, snapshot) if not o.passed]


__all__ = ["Action", "Outcome", "evaluate", "failures"]
