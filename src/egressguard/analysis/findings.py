"""What the analyser reports: one `Finding` per exfiltration path or dead rule."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# The public document the storage and front-door findings quote (findings cite documents
# by title: a user can look them up).
AML_GUIDE = "Azure ML's 'Configure data exfiltration prevention'"


class Severity(enum.IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r}; expected one of {choices}") from None


@dataclass(frozen=True)
class Finding:
    """One problem: which check found it, where (`rule`, in the engine's rule-id form such
    as `application:aks/registry`, `network:n/any`, `allowed_fqdn:x`, `cluster[2]`,
    `immutable[5]` or `policy`), the offending `target`, why it is an exfiltration path
    and how to fix it. `example` is a concrete destination that demonstrates it.
    `identities`: the workload identities the rule is scoped to, the only callers the
    path is open to (empty: every caller)."""

    check: str
    severity: Severity
    rule: str
    target: str
    title: str
    why: str
    fix: str
    example: str = ""
    related: tuple[str, ...] = field(default=())
    identities: tuple[str, ...] = field(default=())

    def applies_to(self, identity: str | None) -> bool:
        """Whether a caller with `identity` (None: no identity) is exposed by it."""
        return not self.identities or identity in self.identities

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "severity": self.severity.label, "rule": self.rule,
                "target": self.target, "title": self.title, "why": self.why, "fix": self.fix,
                "example": self.example, "related": list(self.related),
                "identities": list(self.identities)}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; stable within a severity (policy order)."""
    return sorted(findings, key=lambda f: -f.severity)
