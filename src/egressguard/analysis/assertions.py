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
from egressguard.engine import Decision, Request, Snapshot
from egressguard.errors import InputError
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


class AssertionSyntaxError(InputError, ValueError):
    """An assertion whose request is not exactly one valid `simulate` line."""


def _request_of(assertion: Assertion) -> Request:
    try:
        probes = parse_requests(assertion.request, "assertion")
        if len(probes) != 1:
            raise ValueError("expected exactly one request line")
    except ValueError as exc:
        reason = str(exc).removeprefix("assertion: line 1: ")
        raise AssertionSyntaxError(f"assertion {assertion.label!r}: {reason}") from None
    return probes[0].request


def evaluate(policy: Policy, snapshot: Snapshot) -> list[Outcome]:
    """Every assertion of `policy`, decided by `snapshot` (the compiled `policy`); raises
    `AssertionSyntaxError` for one whose request line does not parse."""
    return [Outcome(a, snapshot.decide(_request_of(a))) for a in policy.assertions]


def failures(policy: Policy, snapshot: Snapshot) -> list[Outcome]:
    return [o for o in evaluate(policy, snapshot) if not o.passed]


__all__ = ["Action", "AssertionSyntaxError", "Outcome", "evaluate", "failures"]
