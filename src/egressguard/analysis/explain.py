"""Why was this denied, and what would allow it (`egressguard explain`; pure, no I/O).

For one request under a policy: the deciding layer, rule and reason; the smallest policy
change that would allow it (`allow.propose`: one application rule for the exact host and
port, after every existing collection so a deny rule someone wrote still wins); whether
that change is enough (decided against the compiled new policy); and the risk findings the
change would add (`analyze` of the new policy minus those the current one already has), so
a person sees what the allow costs before writing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from egressguard.analysis import allow
from egressguard.analysis.analyzer import analyze
from egressguard.analysis.findings import Finding
from egressguard.engine import References, compile_policy
from egressguard.engine.request import Decision, Kind, Request
from egressguard.policy import Policy
from egressguard.policy.load import dump_policy


@dataclass(frozen=True)
class Explanation:
    """One decision explained; `draft` is None when no allow can be proposed (`cannot`
    says why), or when the request is allowed already."""

    request: str
    decision: Decision
    draft: allow.Draft | None = None
    cannot: str = ""
    findings: list[Finding] = field(default_factory=list)
    recorded: dict[str, object] | None = None  # the audit record's own verdict, if any

    @property
    def denied(self) -> bool:
        """Denied, or would be (report-only): both are worth explaining."""
        return not self.decision.allowed

    def as_dict(self) -> dict[str, object]:
        d = self.decision
        change: dict[str, object] | None = None
        if self.draft is not None:
            change = {"summary": self.draft.summary, "diff": self.draft.diff,
                      "permits": self.draft.permits, "verdict": self.draft.verdict}
        return {"request": self.request, "verdict": d.verdict.value,
                "report_only": d.report_only, "layer": d.layer.value, "rule": d.rule,
                "reason": d.reason, "change": change, "cannot_propose": self.cannot or None,
                "new_findings": [f.as_dict() for f in self.findings],
                **({"recorded": self.recorded} if self.recorded is not None else {})}


def target_of(request: Request) -> allow.Target:
    """What an allow would name: the host, port and kind as the gateway sees them (an
    `https://` URL goes through a CONNECT tunnel). `CannotPropose` for other kinds."""
    if request.uri:
        parts = urlsplit(request.uri)
        try:
            port = parts.port
        except ValueError:
            raise allow.CannotPropose(f"{request.uri[:80]!r} has an invalid port") from None
        kind = "http" if parts.scheme == "http" else "connect" if parts.scheme == "https" \
            else parts.scheme
        return allow.target(parts.hostname or "", port, kind)
    kind = request.kind.value if request.kind is not Kind.HTTP else "http"
    return allow.target(request.host, request.port, kind)


def _key(f: Finding) -> tuple[str, str]:
    """A finding's identity across the two policies: its check and rule (a policy-wide
    finding whose target list grows by the new host is not new)."""
    return f.check, f.rule


def explain(policy: Policy, request: Request, refs: References, *, label: str,
            text: str | None = None, shown: str | None = None,
            recorded: dict[str, object] | None = None) -> Explanation:
    """Explain `request` under `policy` (labelled `label`, its YAML `text` when known, for
    the diff). `shown` is the request as a person wrote it."""
    decision = compile_policy(policy, refs).decide(request)
    shown = shown or request.uri or f"{request.kind.value} {request.host}:{request.port}"
    if decision.allowed:
        return Explanation(shown, decision, recorded=recorded)
    try:
        draft = allow.propose(policy, 0, text if text is not None else dump_policy(policy),
                              target_of(request), refs, origin="egressguard explain",
                              base_label=label)
    except allow.CannotPropose as exc:
        return Explanation(shown, decision, cannot=str(exc), recorded=recorded)
    before = {_key(f) for f in analyze(policy, refs).findings}
    raised = [f for f in analyze(draft.policy, refs).findings if _key(f) not in before]
    return Explanation(shown, decision, draft, findings=raised, recorded=recorded)
