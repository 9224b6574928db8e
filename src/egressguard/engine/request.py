"""What the engine decides about (`Request`) and what it answers (`Decision`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from egressguard.engine._frozen import fast_init
from egressguard.engine.normalize import IPAddress


class Kind(enum.StrEnum):
    HTTP = "http"
    CONNECT = "connect"
    DNS = "dns"
    CALLOUT = "callout"
    FLOW = "flow"


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Layer(enum.StrEnum):
    GUARD = "guard"
    IMMUTABLE = "immutable"
    CLUSTER = "cluster"
    ALLOWED_FQDN = "allowed_fqdn"
    NETWORK = "network"
    APPLICATION = "application"
    SERVICE_ENDPOINT = "service_endpoint"
    DEFAULT = "default"


@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """One outbound call to decide.

    `host` is the raw destination (name or IP literal, any encoding); the engine normalises
    it. `addresses` are the IPs the enforcement point resolved and will connect to: the
    address guard checks every one, so the caller must connect only to one of them.
    For callouts, `uri` is the full URI and `callout_type` its type.
    """

    kind: Kind
    host: str
    port: int | None = None
    scheme: str | None = None
    uri: str | None = None
    callout_type: str | None = None
    protocol: str = "tcp"
    addresses: tuple[IPAddress, ...] = ()
    source: IPAddress | None = None

    @classmethod
    def from_url(cls, url: str, *, kind: Kind = Kind.HTTP, callout_type: str | None = None,
                 addresses: tuple[IPAddress, ...] = (),
                 source: IPAddress | None = None) -> Request:
        """A request for a URL; the URL is parsed when decided, so bad input is a denial."""
        return cls(kind=kind, host="", uri=url, callout_type=callout_type,
                   addresses=addresses, source=source)


@fast_init
@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer.

    `verdict` is what the policy says. `report_only` is true when the deciding rule (or the
    whole policy) is in report-only mode: the call then proceeds and the would-be verdict is
    only recorded. `permitted` is what an enforcement point must do.
    """

    verdict: Verdict
    layer: Layer
    rule: str
    reason: str
    destination: str = ""
    port: int | None = None
    report_only: bool = False

    @property
    def permitted(self) -> bool:
        return self.verdict is Verdict.ALLOW or self.report_only

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def as_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict.value, "layer": self.layer.value, "rule": self.rule,
                "reason": self.reason, "destination": self.destination, "port": self.port,
                "report_only": self.report_only, "permitted": self.permitted}
