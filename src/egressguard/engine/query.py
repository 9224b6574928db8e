"""One check query for every front-end that asks the engine about a call: `egressguard
check`, `POST /v1/check` and each line of a `simulate` request list.

A query is what a person types (a URL or host[:port], a kind, a port, a protocol, the
addresses a name resolves to, a source); `request()` turns it into the engine's `Request`
through `build_request` (host:port split by the one parser, `split_host_port`). The three
front-ends validate the same fields the same way, so the same inputs give the same verdict
through each. A problem is a pydantic error naming the field: the API answers 422 with it,
`query_of` words it as one line for the CLI and the request-list parser.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from egressguard.engine.request import Kind, Request, build_request, split_host_port
from egressguard.errors import InputError
from egressguard.policy.model import KNOWN_CALLOUT_TYPES

Protocol = Literal["tcp", "udp", "icmp"]
NEEDS_PORT = (Kind.CONNECT, Kind.FLOW)  # (an ICMP flow has no port)


class QueryError(InputError, ValueError):
    """A check query that does not validate, worded as one line."""


class CheckQuery(BaseModel):
    """One call to decide (the options of `egressguard check`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=8192,
                     description="URL (http, callout) or host[:port] (connect, dns, flow)")
    type: str | None = Field(None, min_length=1, max_length=64,
                             description="decide as an in-process callout of this type")
    kind: Kind | None = Field(None, description="http, connect, dns, callout or flow "
                                                "(default http, or callout with a type)")
    port: int | None = Field(None, ge=1, le=65535,
                             description="destination port (default: the URL's)")
    protocol: Protocol | None = Field(
        None, description="tcp, udp or icmp, for network rules (default tcp; udp for dns)")
    addresses: list[str] = Field(default_factory=list, max_length=64,
                                 description="addresses the name resolves to")
    source: str | None = Field(None, max_length=64, description="client source address")
    identity: str | None = Field(None, max_length=128, pattern=r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)?$",
                                 description="the caller's workload identity (\"\": an "
                                             "anonymous caller; unset: mapped from the source)")

    @field_validator("kind", "type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value == "any":  # "any" matches only rules that say Any: a wrong answer
                raise ValueError("'any' is a rule's protocol, not a call's: ask once "
                                 "per protocol (tcp, udp or icmp)")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            _ip(address)
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None:
            _ip(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CheckQuery:
        kind = self.chosen_kind
        if kind is Kind.CALLOUT and self.type is None:
            raise ValueError("a callout needs its type (sql, kusto, ...)")
        if kind in (Kind.HTTP, Kind.CALLOUT):
            return self
        _, port_text = split_host_port(self.url)
        if port_text.isdigit() and not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text} must be 1-65535")
        if kind in NEEDS_PORT and self.protocol != "icmp" and self.port is None \
                and not port_text.isdigit():
            raise ValueError(f"{kind.value} needs host:port (or a port)")
        return self

    @property
    def chosen_kind(self) -> Kind:
        """The kind asked, or its default: callout with a type, else http."""
        if self.kind is not None:
            return self.kind
        return Kind.CALLOUT if self.type else Kind.HTTP

    def request(self) -> Request:
        """The engine request this query asks about."""
        return build_request(self.url, callout_type=self.type, port=self.port,
                             kind=self.chosen_kind.value, addresses=self.addresses,
                             source=self.source, protocol=self.protocol,
                             identity=self.identity)


def _ip(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def describe(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """The first problem of `exc` as one line, fields renamed through `names` (the CLI's
    option names, the request list's words)."""
    names = names or {}
    parts = []
    for error in exc.errors():
        field = next((str(p) for p in error["loc"] if isinstance(p, str)), "")
        message = str(error["msg"]).removeprefix("Value error, ")
        label = names.get(field, field)
        parts.append(f"{label}: {message}" if label else message)
    return "; ".join(parts) or str(exc)


def query_of(fields: Mapping[str, Any], names: Mapping[str, str] | None = None
             ) -> CheckQuery:
    """A validated query from `fields` (None values left out); raises `QueryError`."""
    try:
        return CheckQuery.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise QueryError(describe(exc, names)) from None


__all__ = ["CheckQuery", "Protocol", "QueryError", "describe", "query_of"]


# The request-list line syntax shared by `simulate`, `egressguard test` and assertions.
KINDS = ("http", "connect", "dns", "flow")
OPTIONS = ("address", "source", "port", "protocol", "identity")
# The query's fields as a request list names them, for error messages.
_NAMES = {"url": "target", "type": "callout type", "addresses": "address"}


def parse_request_line(text: str) -> Request:
    """One request-list line (`simulate`, assertions): a URL, `<callout type> URI`, or
    `connect|dns|flow TARGET`, then `address=`, `source=`, `port=`, `protocol=`,
    `identity=` options;
    raises `ValueError` (a `QueryError` for bad values) with the reason."""
    words = text.split()
    head = words[0].lower()
    callout_type: str | None = None
    kind: Kind | None = None
    if head in KINDS:
        kind = Kind(head)
        words = words[1:]
    elif head in KNOWN_CALLOUT_TYPES - {"*"}:
        callout_type, kind = head, Kind.CALLOUT
        words = words[1:]
    elif "://" not in head:
        raise ValueError(f"{words[0]!r} is neither a URL nor one of the prefixes "
                         f"{', '.join(KINDS)} or a callout type (sql, kusto, ...)")
    if not words:
        raise ValueError("a prefix needs a target after it")
    target, options = words[0], words[1:]
    found: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise ValueError(f"unknown option {option!r}; expected "
                             + ", ".join(f"{o}=..." for o in OPTIONS))
        found[key] = value
    addresses = [a for a in found.get("address", "").split(",") if a]
    protocol = found.get("protocol")
    if kind is Kind.FLOW and target.lower().endswith(("/tcp", "/udp", "/icmp")):
        target, _, protocol = target.rpartition("/")  # `flow 20.50.1.1:1194/udp`
    return query_of({"url": target, "type": callout_type, "kind": kind,
                     "port": found.get("port"), "protocol": protocol,
                     "addresses": addresses, "source": found.get("source"),
                     "identity": found.get("identity")},
                    _NAMES).request()
