"""The one enforcement checkpoint: decide -> report-only -> metrics -> audit event ->
durable record, shared by every enforcement point (DNS filter, `Guard`, the gateway).

Report-only, exactly (also in docs/report-only.md). Three switches exist:

* the policy's ``report_only: true`` (the whole policy),
* a rule collection's ``report_only: true`` (that collection's rules),
* the enforcement point's ``--report-only`` option (``report_only=`` here).

They mean one thing everywhere: **record the would-be verdict and allow**. A decision
is *permitted* when its verdict is allow, or when it is report-only, which is the case
when ANY of the switches that apply to it is on (they combine by OR; no switch can turn
another one off). The engine applies the first two to its own decisions
(`Decision.report_only`); `permit` adds the point's switch. A refusal minted outside the
engine (domain fronting, non-TLS on port 443, a malformed DNS name, an internal error in
a guard) is made by `guard_decision` / `guard_deny`: it belongs to no collection, so the
policy flag and the point's switch apply; in report-only it is relayed and recorded as a
would-deny. Every decision is recorded with its verdict (what the policy says) and
`permitted` (what was done): ``verdict=deny, permitted=true`` is a would-deny.

Not policy decisions, so not subject to report-only: protocol errors (a request or DNS
packet that cannot be parsed or re-encoded: HTTP 400, DNS FORMERR) and overload answers.

Cost: `decide` is on the gateway's keep-alive hot path. Decisions are memoised by the
snapshot itself (`Snapshot.decide`: exact, per snapshot, so a swap can never answer from
the wrong policy), so the checkpoint keeps no memo of its own and allocates nothing but
its result tuple; only real engine work is timed (`Snapshot.recall` tells a memo hit);
counters are cached per label set; no event is built at all without an audit sink
(`recording`).

Suspension (customer-managed keys, docs/keys.md): while the cluster's root key is
unavailable the checkpoint is *suspended*: every decision is a refusal whatever the
policy or report-only says (fail closed) and nothing is recorded (records cannot be
sealed; the transition itself is a system event). Enforcement points
answer a suspended checkpoint as an outage (the gateway: 503 with the reason, open
tunnels closed through an `on_suspend` hook), not as a policy refusal. The checkpoint
knows nothing of keys: whoever watches the key (`keys.suspension`) calls `suspend` and
`resume`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from egressguard import metrics
from egressguard.enforce.events import CloseCause, DecisionEvent, EventSink, NullSink, emit_durably
from egressguard.engine import Decision, Layer, Request, Snapshot, Verdict
from egressguard.engine.holder import SnapshotHolder

log = logging.getLogger("egressguard.enforce")
_PID = f"{os.getpid():x}"
_ids = itertools.count(1)
_IDENTITY_LABELS: set[str] = set()  # identity label values in use in this process


def new_id() -> str:
    """A connection id unique within this process (links a decision to its close)."""
    return f"{_PID}-{next(_ids):x}"


def guard_decision(snapshot: Snapshot, rule: str, reason: str, destination: str,
                   port: int | None = None) -> Decision:
    """A refusal minted outside the engine (pure): the guard layer, report-only when the
    policy is (such a refusal belongs to no rule collection)."""
    return Decision(Verdict.DENY, Layer.GUARD, rule, reason, destination=destination,
                    port=port, report_only=snapshot.report_only)


class Checkpoint:
    """Decides, applies report-only, counts and records for one enforcement point.

    `point` names the point in log lines (``gateway``, ``dns``, ``callout``);
    `report_only` is the point's own switch (ORed with the policy's, see above);
    `audit_timeout` bounds how long `record` waits for a refusal to be durable.
    Safe to share between threads (the memo tolerates races; counters are thread-safe).
    """

    __slots__ = ("_by_identity", "_counters", "_hooks", "_noted", "_templates", "audit_timeout",
                 "cluster", "holder", "point", "recording", "report_only", "sink", "suspended")

    def __init__(self, holder: SnapshotHolder, sink: EventSink | None = None, *,
                 report_only: bool = False, cluster: str = "default",
                 point: str = "gateway", audit_timeout: float = 5.0) -> None:
        self.holder = holder
        self.sink: EventSink = sink or NullSink()
        # Without an audit sink no event is built at all (the counters still are).
        self.recording = not isinstance(self.sink, NullSink)
        self.report_only = report_only
        self.cluster = cluster
        self.point = point
        self.audit_timeout = audit_timeout
        self._counters: dict[tuple[str, str, str, bool], object] = {}
        # id(decision) -> (decision, kind, permitted, its counter): see `note`.
        self._noted: dict[int, tuple[Decision, str, bool, object]] = {}
        self._by_identity: dict[tuple[str, str, bool], object] = {}
        # id(decision) -> (decision, kind, policy version, the event's fields that follow
        # from them): see `event`.
        self._templates: dict[int, tuple[Decision, str, str, tuple[Any, ...]]] = {}
        self.suspended: str | None = None   # the reason while suspended (fail closed)
        self._hooks: list[Callable[[str | None], None]] = []

    # -- suspension ----------------------------------------------------------------------

    def on_suspend(self, hook: Callable[[str | None], None]) -> None:
        """Call `hook(reason)` on suspension and `hook(None)` on resumption (from the
        thread that changes the state: a hook on an event loop must hop onto it)."""
        self._hooks.append(hook)

    def suspend(self, reason: str) -> None:
        """Fail closed from now on: refuse everything, record nothing."""
        first = self.suspended is None
        self.suspended = reason or "suspended"
        if first:
            log.error("%s: suspended, refusing every request: %s", self.point, reason)
            self._call(self.suspended)

    def resume(self) -> None:
        if self.suspended is None:
            return
        self.suspended = None
        log.warning("%s: resumed, enforcing the policy again", self.point)
        self._call(None)

    def _call(self, reason: str | None) -> None:
        for hook in list(self._hooks):
            try:
                hook(reason)
            except Exception:
                log.exception("%s: suspension hook failed", self.point)

    def refusal(self) -> Decision:
        """The decision every request gets while suspended."""
        return Decision(Verdict.DENY, Layer.GUARD, "suspended",
                        f"cluster suspended: {self.suspended}")

    # -- decide and report-only --------------------------------------------------------

    def decide(self, request: Request) -> tuple[Decision, bool]:
        """The decision under the policy in force and whether to let it through."""
        if self.suspended is not None:
            return self.refusal(), False
        snapshot = self.holder.current
        decision = snapshot.recall(request)  # the snapshot's memo
        if decision is None:
            t0 = time.perf_counter()
            decision = snapshot.decide(request)
            metrics.DECISION_SECONDS.observe(time.perf_counter() - t0)  # engine only
        return decision, decision.permitted or self.report_only

    def decide_in(self, snapshot: Snapshot, request: Request) -> Decision:
        """`decide` against a given snapshot (a point that reads the policy once per
        query and decides several names under it), without the report-only step."""
        return snapshot.decide(request)

    def permit(self, decision: Decision) -> bool:
        """What to do: the verdict, unless report-only applies (policy, collection, point);
        nothing while suspended."""
        if self.suspended is not None:
            return False
        return decision.permitted or self.report_only

    def guard_deny(self, rule: str, reason: str, destination: str, port: int | None = None,
                   snapshot: Snapshot | None = None) -> tuple[Decision, bool]:
        """A refusal minted outside the engine and whether to let it through anyway."""
        decision = guard_decision(snapshot or self.holder.current, rule, reason,
                                  destination, port)
        return decision, self.permit(decision)

    # -- metrics, events, records -----------------------------------------------------

    def note(self, decision: Decision, permitted: bool, kind: str, peer: str = "",
             identity: str | None = None) -> None:
        """Count every enforced decision (and log those that are not plain allows);
        by identity too where the point authenticates (`identity` not None)."""
        # The keep-alive path notes the same decision objects over and over (the snapshot's
        # memo hands them out): their counter is found by identity, without building the
        # label key (two enum `.value` reads and a tuple).
        found = self._noted.get(id(decision))
        if found is None or found[0] is not decision or found[1] != kind \
                or found[2] is not permitted:
            found = self._note_counter(decision, permitted, kind)
        found[3].inc()  # type: ignore[attr-defined]
        if identity is not None:
            by = (identity, decision.verdict.value, permitted)
            counter = self._by_identity.get(by)
            if counter is None:
                counter = self._identity_counter(by)
            counter.inc()  # type: ignore[attr-defined]
        if not decision.allowed:
            log.info("%s: %s %s %s %s (%s: %s)%s", self.point, peer,
                     "report-only" if permitted else "deny", kind,
                     decision.destination, decision.rule, decision.reason,
                     " would be denied" if permitted else "")

    def _note_counter(self, decision: Decision, permitted: bool, kind: str
                      ) -> tuple[Decision, str, bool, object]:
        key = (kind, decision.verdict.value, decision.layer.value, permitted)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.DECISIONS.labels(
                key[0], key[1], key[2], "true" if permitted else "false")
        if len(self._noted) >= 4096:
            self._noted.clear()
        found = self._noted[id(decision)] = (decision, kind, permitted, counter)
        return found

    def _identity_counter(self, key: tuple[str, str, bool]) -> object:
        """The counter of (identity, verdict, permitted), with the label bounded: a
        caller cannot grow the metrics without limit (names come from the directory,
        but a directory may hold thousands)."""
        label = key[0] or "anonymous"
        if label not in _IDENTITY_LABELS:
            if len(_IDENTITY_LABELS) >= metrics.MAX_IDENTITY_LABELS:
                label = "other"
            else:
                _IDENTITY_LABELS.add(label)
        counter = self._by_identity[key] = metrics.IDENTITY_DECISIONS.labels(
            label, key[1], "true" if key[2] else "false")
        return counter

    def event(self, decision: Decision, permitted: bool, kind: str, *,
              host: str | None = None, port: int | None = None, connection_id: str = "",
              client_address: str = "", resolved_address: str = "", method: str = "",
              path: str = "", protocol: str = "", callout_type: str = "",
              policy_version: str | None = None, identity: str = "") -> DecisionEvent:
        """The audit event of a decision (the caller emits or records it). `host`
        defaults to the decision's destination without its port; `port` to its port."""
        if host is None and port is None and policy_version is None:
            # The gateway's keep-alive path: the fields that follow from the decision
            # (host, port, verdict, layer, rule, reason, version) are worked out once per
            # decision object (the route and the snapshot memo reuse it) and the event
            # is built positionally: about a third of the keyword-built cost.
            version = self.holder.active.version
            found = self._templates.get(id(decision))
            if found is None or found[0] is not decision or found[1] != kind \
                    or found[2] is not version:
                found = self._template(decision, kind, version)
            c, k, h, p, v, la, ru, re_, pv = found[3]
            return DecisionEvent(time.time(), c, k, h, p, v, permitted, la, ru, re_, pv,
                                 "decision", connection_id or new_id(), client_address,
                                 identity, resolved_address, method, path[:2048], 0, 0, 0.0,
                                 "", protocol, callout_type)
        if host is None:
            host, _, port_text = decision.destination.rpartition(":")
            if not host or not port_text.isdigit():
                host = decision.destination
        return DecisionEvent(
            time=time.time(), cluster=self.cluster, kind=kind, host=host,
            port=decision.port if port is None else port, verdict=decision.verdict.value,
            permitted=permitted, layer=decision.layer.value, rule=decision.rule,
            reason=decision.reason,
            policy_version=(self.holder.active.version if policy_version is None
                            else policy_version),
            connection_id=connection_id or new_id(), client_address=client_address,
            resolved_address=resolved_address, method=method, path=path[:2048],
            protocol=protocol, callout_type=callout_type, client_identity=identity)

    def _template(self, decision: Decision, kind: str, version: str
                  ) -> tuple[Decision, str, str, tuple[Any, ...]]:
        host, _, port_text = decision.destination.rpartition(":")
        if not host or not port_text.isdigit():
            host = decision.destination
        if len(self._templates) >= 4096:
            self._templates.clear()
        found = self._templates[id(decision)] = (decision, kind, version, (
            self.cluster, kind, host, decision.port, decision.verdict.value, decision.layer.value,
            decision.rule, decision.reason, version))
        return found

    def emit(self, event: DecisionEvent) -> None:
        """Fire-and-forget (permitted calls and close events); a failing sink is logged.
        Nothing is emitted while suspended (it could not be sealed)."""
        if self.suspended is not None:
            return
        try:
            self.sink.emit(event)
        except Exception:
            log.exception("%s: event sink failed", self.point)

    async def record(self, event: DecisionEvent) -> None:
        """Make a refusal's event durable before the client sees the refusal.

        Fails closed: when the audit log cannot confirm in `audit_timeout` seconds (or
        fails), the error is logged and the caller refuses all the same. While suspended
        nothing is recorded (the suspension itself is), so the refusal is not delayed.
        """
        if self.suspended is not None:
            return
        try:
            await asyncio.wait_for(emit_durably(self.sink, event), self.audit_timeout)
        except TimeoutError as exc:   # AuditUnavailable is a TimeoutError
            log.error("%s: refusal of %s:%s not confirmed durable by the audit log "
                      "(%s); refusing anyway", self.point, event.host, event.port,
                      exc or f"no answer in {self.audit_timeout:g} s")
        except Exception:
            log.exception("%s: audit record of a refusal failed; refusing anyway",
                          self.point)

    async def enforce(self, decision: Decision, permitted: bool, kind: str,
                      peer: str = "", **fields: object) -> None:
        """Count, then (with an audit sink) emit a permitted decision or make a refused
        one durable: the whole tail of the checkpoint for points that are not hot."""
        self.note(decision, permitted, kind, peer)
        if not self.recording:
            return
        event = self.event(decision, permitted, kind, client_address=peer,
                           **fields)  # type: ignore[arg-type]
        if permitted:
            self.emit(event)
        else:
            await self.record(event)

    def enforce_sync(self, decision: Decision, permitted: bool, kind: str,
                     peer: str = "", **fields: object) -> None:
        """`enforce` for synchronous callers (`Guard`): events are emitted, never awaited;
        the sink queues them (an `AuditLog` writes them within its flush interval)."""
        self.note(decision, permitted, kind, peer)
        if self.recording:
            self.emit(self.event(decision, permitted, kind, client_address=peer,
                                 **fields))  # type: ignore[arg-type]

    @staticmethod
    def exchange_event(opened: DecisionEvent, cause: CloseCause, up: int, down: int,
                       duration: float) -> DecisionEvent:
        """`opened` (a decision never emitted) finished as the one record of a short
        exchange: decision and close at once. Five stores on the object the decision
        built, not a second event: this is the audited keep-alive path."""
        opened.phase = "exchange"
        opened.bytes_up, opened.bytes_down = up, down
        opened.duration_s, opened.close_cause = duration, cause
        return opened

    @staticmethod
    def close_event(opened: DecisionEvent, cause: CloseCause, up: int, down: int,
                    duration: float) -> DecisionEvent:
        """The close event of a permitted connection."""
        return DecisionEvent(
            time=time.time(), cluster=opened.cluster, kind=opened.kind, host=opened.host,
            port=opened.port, verdict=opened.verdict, permitted=opened.permitted,
            layer=opened.layer, rule=opened.rule, reason=opened.reason,
            policy_version=opened.policy_version, phase="close",
            connection_id=opened.connection_id, client_address=opened.client_address,
            resolved_address=opened.resolved_address, method=opened.method,
            path=opened.path, bytes_up=up, bytes_down=down, duration_s=duration,
            close_cause=cause, client_identity=opened.client_identity)
