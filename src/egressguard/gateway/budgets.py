"""The gateway's hook into byte budgets (`enforce/budget.py` does the accounting).

A connection asks `admit` when a permitted tunnel or HTTP exchange is about to start: it
gets the `Metered` to charge each chunk with before relaying it, and, when a budget is
used up, the refusal to answer with (429 with `Retry-After`; recorded like every refusal,
report-only when the budget or the policy is). A chunk that crosses an enforced budget
turns into the decision that cuts the connection (`overrun`). Without budgets in the
policy in force the HTTP path skips `admit` (`ledger` is empty and `snapshot` current).
"""

from __future__ import annotations

import math

from egressguard import metrics
from egressguard.enforce.budget import Ledger, Meter, Overrun
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.engine import Decision, Layer, Verdict
from egressguard.engine.normalize import IPAddress
from egressguard.gateway import http1


class Metered:
    """One connection's meter, with what its decisions are about."""

    __slots__ = ("host", "kind", "meter", "port")

    def __init__(self, meter: Meter, host: str, port: int, kind: str) -> None:
        self.meter = meter
        self.host = host
        self.port = port
        self.kind = kind

    def charge(self, up: int, down: int, now: float) -> Overrun | None:
        return self.meter.charge(up, down, now)


class Budgets:
    """The ledger of the policy in force, re-bound (usage kept) when the policy changes."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.ledger = Ledger()
        self.snapshot: object = None   # the policy `ledger` was bound for

    def _current(self) -> Ledger:
        snapshot = self.checkpoint.holder.current
        if snapshot is not self.snapshot:
            self.snapshot = snapshot
            budgets = snapshot.policy.budgets
            if budgets != list(self.ledger.budgets):
                self.ledger = self.ledger.rebind(budgets)
        return self.ledger

    def admit(self, host: str, addresses: tuple[IPAddress, ...], port: int, identity: str,
              kind: str, now: float) -> tuple[Metered | None, tuple[Decision, bool] | None,
                                              Overrun | None]:
        """The meter of a connection about to start and, when a budget is used up, the
        refusal decision with whether to let it through anyway (report-only)."""
        ledger = self._current()
        if not ledger:
            return None, None, None
        meter, over = ledger.open(host, addresses, identity, now)
        metered = None if meter is None else Metered(meter, host, port, kind)
        if over is None:
            return metered, None, None
        return metered, self.overrun(over, host, port), over

    def overrun(self, over: Overrun, host: str, port: int) -> tuple[Decision, bool]:
        """The decision that cuts (or refuses) a connection beyond `over`'s budget."""
        snapshot = self.checkpoint.holder.current
        decision = Decision(Verdict.DENY, Layer.BUDGET, over.rule, over.reason,
                            destination=f"{host}:{port}", port=port,
                            report_only=over.budget.report_only or snapshot.report_only)
        permitted = self.checkpoint.permit(decision)
        outcome = "refused" if over.refused else "cut"
        metrics.BUDGET_OVERRUNS.labels(over.budget.name,
                                       f"would_{outcome}" if permitted else outcome).inc()
        return decision, permitted


def too_many(decision: Decision, over: Overrun, *, close: bool) -> bytes:
    """429 naming the budget and when it resets (the client may retry then)."""
    body = (f"egressguard: byte budget used up\n"
            f"destination: {decision.destination}\n"
            f"rule: {decision.rule}\n"
            f"reason: {decision.reason}\n")
    return http1.response(429, "Too Many Requests", body, close=close, extra=(
        ("Retry-After", str(max(1, math.ceil(over.retry_after)))),
        ("X-Egressguard-Decision", decision.verdict.value),
        ("X-Egressguard-Rule", decision.rule)))
