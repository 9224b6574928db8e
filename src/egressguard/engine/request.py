"""What the engine decides about (`Request`) and what it answers (`Decision`)."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
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
    BUDGET = "budget"   # a byte budget used up (enforce/budget.py), not a rule's verdict


@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """One outbound call to decide.

    `host` is the raw destination (name or IP literal, any encoding); the engine normalises
    it. `addresses` are the IPs the enforcement point resolved and will connect to: the
    address guard checks every one, so the caller must connect only to one of them.
    For callouts, `uri` is the full URI and `callout_type` its type. `identity` is the
    workload identity the enforcement point authenticated: None when the point has no
    way to authenticate (the engine then maps `source` to an identity when the policy's
    identities claim it), "" for a caller the point found anonymous (no mapping).
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
    identity: str | None = None

    @classmethod
    def from_url(cls, url: str, *, kind: Kind = Kind.HTTP, callout_type: str | None = None,
                 addresses: tuple[IPAddress, ...] = (),
                 source: IPAddress | None = None, identity: str | None = None) -> Request:
        """A request for a URL; the URL is parsed when decided, so bad input is a denial."""
        return cls(kind=kind, host="", uri=url, callout_type=callout_type,
                   addresses=addresses, source=source, identity=identity)


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


def split_host_port(text: str) -> tuple[str, str]:
    """Split `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 address or a bare host into
    (host without brackets, port text or ""). The port text is not validated."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def build_request(target: str, *, callout_type: str | None = None, port: int | None = None,
                  kind: str | None = None, addresses: Sequence[str] = (),
                  source: str | None = None, protocol: str | None = None,
                  identity: str | None = None) -> Request:
    """A `Request` from the text a person types (`egressguard check`, `POST /v1/check`).

    `target` is a URL for http and callout requests, `host[:port]` otherwise; the kind
    defaults to callout when a callout type is given, else http. Raises ValueError on a
    bad address, kind or protocol.
    """
    ips = tuple(ipaddress.ip_address(a) for a in addresses)
    src = ipaddress.ip_address(source) if source else None
    chosen = Kind(kind.lower()) if kind else (Kind.CALLOUT if callout_type else Kind.HTTP)
    if protocol is not None and protocol.lower() not in ("tcp", "udp", "icmp"):
        raise ValueError(f"protocol {protocol!r}: expected tcp, udp or icmp")
    if chosen in (Kind.HTTP, Kind.CALLOUT):
        return Request(kind=chosen, host="", uri=target, port=port, callout_type=callout_type,
                       addresses=ips, source=src, protocol=(protocol or "tcp").lower(),
                       identity=identity)
    host, port_text = split_host_port(target)
    if port_text and not port_text.isdigit() and not target.lstrip().startswith("["):
        host = target  # `name:junk` is no host:port: decide (and refuse) the whole text
    target_port = int(port_text) if port_text.isdigit() else None
    default_protocol = "udp" if chosen is Kind.DNS else "tcp"
    return Request(kind=chosen, host=host, port=port or target_port, addresses=ips,
                   source=src, protocol=(protocol or default_protocol).lower(),
                   identity=identity)
