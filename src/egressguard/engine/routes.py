"""IoT Hub routes and endpoints, decided (pure: no I/O).

An endpoint's destination is derived, never written: its host and the port its protocol
uses (AMQP 5671, AMQP over WebSockets 443, Kafka 9093, HTTPS 443). A route works when the
policy lets its endpoint's destination through, decided as the tunnel the egress opens (a
`connect` request, so application rules, FQDN network rules and the allowed-FQDN list all
speak). File upload and identity export egress by feature, not by route: they are checked
as endpoints of their own. `stops_working` is what `cluster update --what-if` lists;
`health` turns observed decisions into IoT Hub's endpoint health states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from egressguard.engine.request import Decision, Kind, Request
from egressguard.engine.snapshot import Snapshot
from egressguard.policy.model import Endpoint, Policy

PORTS = {"amqp": 5671, "amqp_websockets": 443, "kafka": 9093, "https": 443}
FEATURES = {"file_upload": "file upload", "identity_export": "identity export"}

Health = Literal["healthy", "unhealthy", "degraded", "dead", "unknown"]
HEALTH_STATES: tuple[Health, ...] = ("healthy", "unhealthy", "degraded", "dead", "unknown")


def destination(endpoint: Endpoint) -> tuple[str, int]:
    """(host, port) an endpoint egresses to."""
    return endpoint.host, PORTS[endpoint.wire]


@dataclass(frozen=True)
class Check:
    """One route (or egress feature) and the decision for its endpoint's destination."""

    route: str  # the route's name, or the feature ("file upload") for unrouted egress
    endpoint: Endpoint
    decision: Decision

    @property
    def works(self) -> bool:
        """What the policy says (a report-only denial still stops the route once the
        policy is enforced, which is what a what-if is asked about)."""
        return self.decision.allowed

    def as_dict(self) -> dict[str, object]:
        host, port = destination(self.endpoint)
        return {"route": self.route, "endpoint": self.endpoint.name,
                "endpointType": self.endpoint.type, "destination": f"{host}:{port}",
                "protocol": self.endpoint.wire, "works": self.works,
                "rule": self.decision.rule, "reason": self.decision.reason}


def decide_endpoint(snapshot: Snapshot, endpoint: Endpoint) -> Decision:
    host, port = destination(endpoint)
    return snapshot.decide(Request(kind=Kind.CONNECT, host=host, port=port))


def checks(policy: Policy, snapshot: Snapshot) -> list[Check]:
    """Every enabled route, then every file upload and identity export endpoint, decided
    under `snapshot` (the compiled `policy`, or a proposed one)."""
    by_name = {e.name: e for e in policy.endpoints}
    out = [Check(r.name, by_name[r.endpoint], decide_endpoint(snapshot, by_name[r.endpoint]))
           for r in policy.routes if r.enabled]
    out += [Check(FEATURES[e.type], e, decide_endpoint(snapshot, e))
            for e in policy.endpoints if e.type in FEATURES]
    return out


def stops_working(policy: Policy, before: Snapshot, after: Snapshot,
                  proposed: Policy | None = None) -> list[Check]:
    """The routes (and features) that work under `before` and would not under `after`,
    each with the decision that would stop it. `proposed`: the routes after the change
    (default: the same as `policy`'s)."""
    working = {(c.route, c.endpoint.name) for c in checks(policy, before) if c.works}
    return [c for c in checks(proposed or policy, after)
            if not c.works and (c.route, c.endpoint.name) in working]


def health(outcomes: Sequence[bool]) -> Health:
    """IoT Hub's endpoint health from the decisions observed for its destination, oldest
    first (True: let through): none seen `unknown`; all through `healthy`; the newest
    through after refusals `degraded` (recovering); the newest refused after some got
    through `unhealthy`; every one refused `dead` (nothing will get through as it stands)."""
    if not outcomes:
        return "unknown"
    if all(outcomes):
        return "healthy"
    if not any(outcomes):
        return "dead"
    return "degraded" if outcomes[-1] else "unhealthy"


def endpoint_rows(policy: Policy, observed: Mapping[str, Iterable[bool]]
                  ) -> list[dict[str, object]]:
    """Each endpoint with its destination, the routes to it and its health (`observed`:
    outcomes by endpoint name, oldest first)."""
    rows: list[dict[str, object]] = []
    for endpoint in policy.endpoints:
        host, port = destination(endpoint)
        rows.append({"name": endpoint.name, "type": endpoint.type,
                     "destination": f"{host}:{port}", "protocol": endpoint.wire,
                     "entity": endpoint.entity,
                     "routes": [r.name for r in policy.routes if r.endpoint == endpoint.name],
                     "health": health(list(observed.get(endpoint.name, ())))})
    return rows
