"""The enforcement checkpoint: report-only defined once (a table over every switch), the
memo, the metrics, the event and the durable record of a refusal."""

from __future__ import annotations

import asyncio
import logging
import textwrap

import pytest
from prometheus_client import REGISTRY

from egressguard.catalog import references
from egressguard.enforce.checkpoint import Checkpoint, guard_decision
from egressguard.enforce.events import DecisionEvent
from egressguard.engine import Kind, Request, compile_policy
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.policy import load_policy_text

pytestmark = pytest.mark.timeout(30)

POLICY = textwrap.dedent("""\
    restrict_outbound_network_access: true
    report_only: {policy_flag}
    application_rule_collections:
      - name: trial
        priority: 100
        action: deny
        report_only: true
        rules:
          - {{name: trial, targets: [trial.example.com], protocols: ['https:443']}}
      - name: allowed
        priority: 200
        action: allow
        rules:
          - {{name: example, targets: ['*.example.com'], protocols: ['https:443']}}
    """)


def holder(policy_flag: bool = False, extra: str = "") -> SnapshotHolder:
    text = POLICY.format(policy_flag=str(policy_flag).lower()) + extra
    snapshot = compile_policy(load_policy_text(text, "t.yaml"), references())
    return SnapshotHolder(Active(snapshot, f"v{policy_flag}{len(extra)}", "test"))


class ListSink:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def emit(self, event: DecisionEvent) -> None:
        self.events.append(event)


def connect(host: str) -> Request:
    return Request(kind=Kind.CONNECT, host=host, port=443)


# (policy report_only, --report-only, what is decided) -> (verdict, permitted, layer)
TABLE = [
    (False, False, "allowed.example.com", ("allow", True, "application")),
    (False, False, "evil.net", ("deny", False, "default")),
    (True, False, "evil.net", ("deny", True, "default")),
    (False, True, "evil.net", ("deny", True, "default")),
    (True, True, "evil.net", ("deny", True, "default")),
    # a report-only collection's deny under an allowing rule: a would-deny
    (False, False, "trial.example.com", ("deny", True, "application")),
    (False, True, "trial.example.com", ("deny", True, "application")),
    # refusals minted outside the engine (domain fronting and the like)
    (False, False, "guard", ("deny", False, "guard")),
    (True, False, "guard", ("deny", True, "guard")),
    (False, True, "guard", ("deny", True, "guard")),
    (True, True, "guard", ("deny", True, "guard")),
]


@pytest.mark.parametrize(("policy_flag", "switch", "what", "expected"), TABLE,
                         ids=[f"policy={p}-switch={s}-{w}" for p, s, w, _ in TABLE])
def test_report_only_means_record_the_would_be_verdict_and_allow_at_every_switch(
        policy_flag: bool, switch: bool, what: str, expected: tuple[str, bool, str]) -> None:
    sink = ListSink()
    cp = Checkpoint(holder(policy_flag), sink, report_only=switch, point="test")
    if what == "guard":
        decision, permitted = cp.guard_deny("guard:domain-fronting", "SNI mismatch",
                                            "a.example.com:443", 443)
    else:
        decision, permitted = cp.decide(connect(what))
    assert permitted == cp.permit(decision)
    assert (decision.verdict.value, permitted, decision.layer.value) == expected
    cp.enforce_sync(decision, permitted, "connect", "10.1.2.3")
    [event] = sink.events
    assert (event.verdict, event.permitted, event.layer) == expected
    assert event.client_address == "10.1.2.3" and event.connection_id


def test_guard_decision_is_report_only_exactly_when_the_policy_is() -> None:
    for flag in (False, True):
        decision = guard_decision(holder(flag).current, "guard:x", "why", "h:1", 1)
        assert (decision.report_only, decision.permitted) == (flag, flag)


def test_memoised_decision_is_dropped_when_the_policy_changes() -> None:
    h = holder()
    cp = Checkpoint(h)
    assert cp.decide(connect("new.org"))[1] is False
    h.swap(holder(extra="allowed_fqdn_list: [new.org]\n").active)
    assert cp.decide(connect("new.org"))[1] is True


def test_decisions_are_counted_with_their_outcome_and_events_carry_every_field() -> None:
    sink = ListSink()
    h = holder()
    cp = Checkpoint(h, sink, cluster="prod", point="test")
    labels = {"kind": "dns", "verdict": "deny", "layer": "default", "permitted": "false"}
    before = REGISTRY.get_sample_value("egressguard_decisions_total", labels) or 0.0
    decision, permitted = cp.decide(Request(kind=Kind.DNS, host="evil.net", protocol="udp"))
    cp.enforce_sync(decision, permitted, "dns", "127.0.0.9", method="A", protocol="udp")
    assert REGISTRY.get_sample_value("egressguard_decisions_total", labels) == before + 1
    [e] = sink.events
    assert (e.kind, e.host, e.port, e.cluster, e.policy_version) == (
        "dns", "evil.net", None, "prod", h.active.version)
    assert (e.rule, e.client_address, e.method, e.protocol) == (
        "default", "127.0.0.9", "A", "udp")
    assert "not allowed" in e.reason


def test_without_an_audit_sink_no_event_is_built() -> None:
    cp = Checkpoint(holder())
    assert cp.recording is False
    decision, permitted = cp.decide(connect("evil.net"))
    asyncio.run(cp.enforce(decision, permitted, "connect"))  # counts only; nothing to await


class DurableSink(ListSink):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.durable: list[DecisionEvent] = []

    async def record(self, event: DecisionEvent) -> None:
        await asyncio.sleep(self.delay)
        self.durable.append(event)


def test_a_refusal_is_durable_before_enforce_returns_and_a_permit_is_only_emitted() -> None:
    sink = DurableSink(0.05)
    cp = Checkpoint(holder(), sink)
    denied, permitted = cp.decide(connect("evil.net"))
    asyncio.run(cp.enforce(denied, permitted, "connect"))
    assert [e.host for e in sink.durable] == ["evil.net"] and not sink.events
    allowed, permitted = cp.decide(connect("a.example.com"))
    asyncio.run(cp.enforce(allowed, permitted, "connect"))
    assert [e.host for e in sink.events] == ["a.example.com"]


def test_an_audit_log_that_never_confirms_delays_a_refusal_only_up_to_the_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = DurableSink(3600)
    cp = Checkpoint(holder(), sink, audit_timeout=0.2, point="test")
    decision, permitted = cp.decide(connect("evil.net"))

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await cp.enforce(decision, permitted, "connect")
        return loop.time() - start

    with caplog.at_level(logging.ERROR, "egressguard.enforce"):
        took = asyncio.run(timed())
    assert 0.15 < took < 3.0
    assert "not confirmed durable" in caplog.text and "refusing anyway" in caplog.text


def test_event_of_a_reused_decision_matches_the_keyword_built_one_and_follows_the_version(
        ) -> None:
    held = holder()
    cp = Checkpoint(held, ListSink())
    decision, permitted = cp.decide(connect("allowed.example.com"))
    fields = dict(connection_id="c1", client_address="10.0.0.1:5", resolved_address="1.2.3.4",
                  method="GET", path="/p", identity="build-agent")
    first = cp.event(decision, permitted, "http", **fields)  # type: ignore[arg-type]
    again = cp.event(decision, permitted, "http", **fields)  # type: ignore[arg-type]
    # The keyword path (an explicit host/port) builds the same record.
    explicit = cp.event(decision, permitted, "http", host="allowed.example.com", port=443,
                        **fields)  # type: ignore[arg-type]
    for event in (first, again):
        assert {**event.as_dict(), "time": 0} == {**explicit.as_dict(), "time": 0}
    assert (first.host, first.port, first.phase, first.policy_version) == (
        "allowed.example.com", 443, "decision", held.active.version)
    assert first.client_identity == again.client_identity == "build-agent"  # who, every time
    # Another kind for the same decision, and a new policy version, are not mixed up.
    assert cp.event(decision, permitted, "connect").kind == "connect"
    held.swap(Active(held.active.snapshot, "v-next", "test"))
    assert cp.event(decision, permitted, "http").policy_version == "v-next"
    assert cp.event(decision, permitted, "http").connection_id != ""
