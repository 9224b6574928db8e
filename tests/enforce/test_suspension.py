"""A suspended checkpoint (the cluster's key is unavailable) fails closed at every
enforcement point: every decision is a refusal whatever the policy or report-only says,
nothing is recorded (it could not be sealed), hooks hear both transitions once."""

from __future__ import annotations

import asyncio

import pytest

from egressguard.enforce.checkpoint import Checkpoint
from egressguard.engine import Kind, Request, Verdict
from tests.enforce.test_checkpoint import ListSink, holder

pytestmark = pytest.mark.timeout(30)
ALLOWED = Request(kind=Kind.CONNECT, host="api.example.com", port=443)


@pytest.mark.parametrize("report_only", [False, True])
def test_a_suspended_checkpoint_refuses_what_the_policy_allows(report_only: bool) -> None:
    cp = Checkpoint(holder(policy_flag=report_only), ListSink(), report_only=report_only)
    assert cp.decide(ALLOWED)[1] is True
    cp.suspend("disabled: key 'audit' is disabled")
    decision, permitted = cp.decide(ALLOWED)
    assert (decision.verdict, permitted) == (Verdict.DENY, False)
    assert "suspended: disabled" in decision.reason
    # The memoised path of points that read the policy once (DNS) fails closed too.
    assert cp.permit(cp.decide_in(cp.holder.current, ALLOWED)) is False
    assert cp.guard_deny("r", "why", "x.example.com")[1] is False
    cp.resume()
    assert cp.decide(ALLOWED)[1] is True


def test_nothing_is_recorded_while_suspended_and_hooks_hear_each_transition_once() -> None:
    sink = ListSink()
    cp = Checkpoint(holder(), sink)
    heard: list[str | None] = []
    cp.on_suspend(heard.append)
    cp.suspend("access denied")
    cp.suspend("access denied")           # still suspended: no second call
    decision, permitted = cp.decide(ALLOWED)
    cp.emit(cp.event(decision, permitted, "connect"))
    asyncio.run(cp.enforce(decision, permitted, "connect"))   # returns at once
    assert sink.events == []
    cp.resume()
    cp.resume()
    assert heard == ["access denied", None]
    decision, permitted = cp.decide(ALLOWED)
    cp.emit(cp.event(decision, permitted, "connect"))
    assert len(sink.events) == 1
