"""Pydantic models of one cluster's outbound-access policy.

The model validates shape and syntax (a regex RE2 cannot compile, a host pattern with a
`*` outside the leftmost label, an unfilled `<region>` placeholder); the decision engine
(`egressguard.engine`) turns a valid `Policy` into fast lookup structures.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from egressguard.policy.defaults import IMMUTABLE_CALLOUT_ROWS
from egressguard.policy.packed import Packed

_PLACEHOLDER = re.compile(r"<[^<>]+>|APIServerPublicIP|CustomDNSIP")
_GLOB_LABEL = re.compile(r"[a-z0-9_*-]+")
_LDH_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_PORT_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# Bounds on every string an operator or the API can put in a policy: each one ends up in
# decisions, audit records and database columns, so none may be larger than a column.
MAX_NAME = 128  # rule, collection and policy names
MAX_HOST = 255  # a host pattern: a 253-octet name, a leading '.' or '*.'
MAX_REGEX = 4096
MAX_DESCRIPTION = 1024
MAX_RESOURCE = 1024  # an ARM resource id

KNOWN_CALLOUT_TYPES = frozenset({
    "kusto", "sql", "mysql", "postgresql", "azure_digital_twins", "cosmosdb",
    "sandbox_artifacts", "external_data", "webapi", "azure_openai", "genevametrics", "*",
})


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _reject_placeholder(value: str, what: str) -> str:
    found = _PLACEHOLDER.search(value)
    if found:
        raise ValueError(f"{what} {value!r} has an unresolved placeholder {found.group(0)!r}")
    return value


_NORMALIZE: list[Any] = []


def _normalizer() -> list[Any]:
    """The engine's host normaliser, imported on first use (the engine imports this
    module) and kept: an import statement per pattern is a third of a big policy's
    validation."""
    from egressguard.engine.normalize import InvalidHost, normalize_host

    # Uncached: a big policy's names would evict the names a gateway is deciding.
    _NORMALIZE[:] = [getattr(normalize_host, "__wrapped__", normalize_host), InvalidHost]
    return _NORMALIZE


# A lower-case name with no wildcard, leading dot or placeholder: what the general path
# below would only strip, lower and split to hand to the normaliser as it is.
_PLAIN_NAME = re.compile(r"[a-z0-9_-][a-z0-9_.-]*")


def validate_host_pattern(value: str) -> str:
    """Check and canonicalise a host pattern (semantics §3); return its canonical text."""
    normalize_host, InvalidHost = _NORMALIZE or _normalizer()
    if _PLAIN_NAME.fullmatch(value):  # most targets of a big policy
        try:
            return str(normalize_host(value).name)
        except InvalidHost as exc:
            raise ValueError(f"host pattern {value!r}: {exc}") from None
    _reject_placeholder(value, "host pattern")
    text = value.strip().lower()
    if text == "*":
        return text
    leading_dot = text.startswith(".")
    body = text[1:] if leading_dot else text
    first, _, rest = body.partition(".")
    if "*" in rest:
        raise ValueError(f"host pattern {value!r}: '*' may appear only in the leftmost label")
    if "*" in first:
        if leading_dot:
            raise ValueError(f"host pattern {value!r}: '.' prefix cannot combine with '*'")
        if not rest:
            raise ValueError(f"host pattern {value!r}: a wildcard needs a parent domain")
        if not _GLOB_LABEL.fullmatch(first):
            raise ValueError(f"host pattern {value!r}: invalid wildcard label {first!r}")
        try:
            suffix = normalize_host(rest).name
        except InvalidHost as exc:
            raise ValueError(f"host pattern {value!r}: {exc}") from None
        return f"{first}.{suffix}"
    try:
        host = normalize_host(body)
    except InvalidHost as exc:
        raise ValueError(f"host pattern {value!r}: {exc}") from None
    if leading_dot and host.is_ip:
        raise ValueError(f"host pattern {value!r}: '.' prefix needs a domain name")
    return f".{host.name}" if leading_dot else host.name


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the reason goes into the load error, not to stderr


def _regex(value: str) -> str:
    try:
        re2.compile(value, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(f"invalid regular expression {value!r} (RE2 syntax): "
                         f"{detail}") from None
    return value


def _arm_bool(value: Any) -> Any:
    """Accept the ARM strings `Enabled`/`Disabled` as well as booleans."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("enabled", "true"):
            return True
        if lowered in ("disabled", "false"):
            return False
        raise ValueError(f"expected Enabled, Disabled, true or false, got {value!r}")
    return value


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"name {value!r} may contain only letters, digits, '_', '.' and "
                         "'-', and must start with a letter, a digit or '_'")
    return value


ArmBool = Annotated[bool, BeforeValidator(_arm_bool)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME),
                 AfterValidator(_name)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]
# Validated one item at a time so that an error's path (and line) names the item; the
# length is checked first, so a huge value is refused without being parsed or echoed.
HostPattern = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HOST),
                        AfterValidator(validate_host_pattern)]


class CalloutRule(_Strict):
    """One callout policy entry; reads and writes Kusto's JSON names losslessly."""

    callout_type: str = Field(validation_alias=AliasChoices("callout_type", "CalloutType"),
                              max_length=64)
    uri_regex: str = Field(validation_alias=AliasChoices("uri_regex", "CalloutUriRegex"),
                           min_length=1, max_length=MAX_REGEX)
    can_call: bool = Field(validation_alias=AliasChoices("can_call", "CanCall"))

    @field_validator("callout_type")
    @classmethod
    def _type(cls, value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in KNOWN_CALLOUT_TYPES:
            choices = ", ".join(sorted(KNOWN_CALLOUT_TYPES))
            raise ValueError(f"unknown callout type {value!r}; expected one of {choices}")
        return lowered

    @field_validator("uri_regex")
    @classmethod
    def _uri_regex(cls, value: str) -> str:
        return _regex(value)

    def to_kusto(self) -> dict[str, Any]:
        return {"CalloutType": self.callout_type, "CalloutUriRegex": self.uri_regex,
                "CanCall": self.can_call}


class PortSpec(_Strict):
    """An application-rule protocol with its port; `port=None` means any port."""

    protocol: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        if len(text) > 32:
            raise ValueError("protocol: expected http, https or mssql with an optional "
                             ":port (too long)")
        proto, _, port = text.strip().lower().partition(":")
        if proto not in ("http", "https", "mssql"):
            raise ValueError(f"protocol {text!r}: expected http, https or mssql")
        if not port:
            return cls(protocol=proto, port={"http": 80, "https": 443, "mssql": 1433}[proto])
        if port == "*":
            return cls(protocol=proto, port=None)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"protocol {text!r}: port must be 1-65535 or *")
        return cls(protocol=proto, port=int(port))

    def __str__(self) -> str:
        return f"{self.protocol}:{'*' if self.port is None else self.port}"


@functools.lru_cache(maxsize=256)
def _port_spec(text: str) -> PortSpec:
    """`PortSpec.parse`, shared: a big policy repeats a handful of specs (frozen models,
    so one instance serves every rule; a ValueError is not cached)."""
    return PortSpec.parse(text)


def _port_specs(value: Any) -> Any:
    if isinstance(value, list):
        return [_port_spec(v) if isinstance(v, str) else v for v in value]
    return value


def _source(value: str) -> str:
    """An IP or CIDR, canonical (`10.0.0.1/8` -> `10.0.0.0/8`)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"source {value!r} is not an IP address or CIDR") from None


Source = Annotated[str, StringConstraints(max_length=64), AfterValidator(_source)]


def _trusted_range(value: str) -> str:
    try:
        network = str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"trusted range {value!r} is not an IP address or CIDR") from None
    if network.endswith("/0"):
        raise ValueError(f"trusted range {value!r} would trust every address; list the "
                         "private ranges your allowed names resolve into")
    return network


TrustedRange = Annotated[str, StringConstraints(max_length=64),
                         AfterValidator(_trusted_range)]


class ApplicationRule(_Strict):
    """Allow or deny HTTP/HTTPS to host patterns (semantics §3) on given ports."""

    name: Name
    action: Action | None = None
    targets: list[HostPattern] = Field(default_factory=list)
    fqdn_tags: list[Name] = Field(default_factory=list)
    protocols: Annotated[list[PortSpec], BeforeValidator(_port_specs)] = Field(
        default_factory=lambda: [PortSpec(protocol="http", port=80),
                                 PortSpec(protocol="https", port=443)])
    sources: list[Source] = Field(default_factory=list)
    identities: list[Name] = Field(default_factory=list, max_length=256)
    """Applies only to requests made by one of these workload identities (empty: any)."""
    description: Description = ""

    @model_validator(mode="before")
    @classmethod
    def _tags_default_to_https(cls, data: Any) -> Any:
        """FQDN tags stand for HTTPS egress, as Azure Firewall's do: a rule naming them
        defaults to `https:443` (not the http:80 + https:443 of other rules)."""
        if isinstance(data, dict) and data.get("fqdn_tags") and "protocols" not in data:
            return {**data, "protocols": ["https:443"]}
        return data

    @model_validator(mode="after")
    def _has_target(self) -> ApplicationRule:
        if not self.targets and not self.fqdn_tags:
            raise ValueError(f"rule {self.name!r} needs targets or fqdn_tags")
        if self.fqdn_tags and any(p.protocol != "https" for p in self.protocols):
            raise ValueError(f"rule {self.name!r}: FQDN tags allow HTTPS only (as Azure "
                             "Firewall's do); put plain-HTTP targets in a rule of their own")
        return self


class PortRange(_Strict):
    low: int = Field(ge=0, le=65535)
    high: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str | int) -> PortRange:
        if isinstance(text, int):
            return cls(low=text, high=text)
        if len(text) > 32:
            raise ValueError("port: expected N, N-M or * (too long)")
        if text.strip() == "*":
            return cls(low=0, high=65535)
        found = _PORT_RANGE.fullmatch(text.strip())
        if not found:
            raise ValueError(f"port {text!r}: expected N, N-M or *")
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if not low <= high <= 65535:
            raise ValueError(f"port {text!r}: range must be ascending within 0-65535")
        return cls(low=low, high=high)

    def __str__(self) -> str:
        if (self.low, self.high) == (0, 65535):
            return "*"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def _port_ranges(value: Any) -> Any:
    if isinstance(value, list):
        return [PortRange.parse(v) if isinstance(v, str | int) else v for v in value]
    return value


def is_service_tag(text: str) -> bool:
    """`AzureCloud.westeurope`, `Storage`: starts with an upper-case letter."""
    return bool(text) and text[0].isupper() and " " not in text


def _destination(raw: str) -> str:
    """`*`, a service tag, an IP/CIDR (canonical network) or a host pattern."""
    text = _reject_placeholder(raw.strip(), "destination")
    if text == "*" or is_service_tag(text):
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    if _ADDRESS_LIKE.fullmatch(text):  # `1.2.3.4-5`, `10.0.0.0/33`: a typo, not a name
        raise ValueError(f"destination {text!r} is not an IP address or CIDR (write an "
                         "address, a CIDR such as 10.0.0.0/24, or a host name; ranges "
                         "are written as CIDRs)")
    return validate_host_pattern(text)


# Digits, dots, `-`, `/` and `:` only, or an address with a prefix length: meant as an
# address (no host name is all-numeric labels; a name never holds `/`).
_ADDRESS_LIKE = re.compile(r"[0-9.\-/]+|[0-9a-fA-F:.]*:[0-9a-fA-F:.\-/]*|.*/.*")


Destination = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HOST),
                        AfterValidator(_destination)]

NetworkProtocol = Literal["tcp", "udp", "icmp", "any"]
_ANY: NetworkProtocol = "any"


class NetworkRule(_Strict):
    """An L3/L4 rule: destinations are IPs, CIDRs, `*`, service tags or FQDNs."""

    name: Name
    action: Action | None = None
    destinations: list[Destination] = Field(min_length=1)
    protocols: list[NetworkProtocol] = Field(default_factory=lambda: [_ANY])
    ports: Annotated[list[PortRange], BeforeValidator(_port_ranges)] = Field(
        default_factory=lambda: [PortRange(low=0, high=65535)])
    sources: list[Source] = Field(default_factory=list)
    identities: list[Name] = Field(default_factory=list, max_length=256)
    description: Description = ""
    match_resolved_names: bool = False
    """Also allow a request by name when every address it resolves to falls in this rule.
    Off by default: deciding such a name needs a DNS query first, and the query itself
    carries the name out (semantics §4 step 5)."""

    @field_validator("protocols", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return [v.lower() if isinstance(v, str) else v for v in value] if isinstance(
            value, list) else value


class _Collection(_Strict):
    name: Name
    priority: int = Field(ge=100, le=65000, default=1000)
    action: Action = Action.ALLOW
    report_only: bool = False
    identities: list[Name] = Field(default_factory=list, max_length=256)
    """Scopes every rule of the collection to these identities (a rule's own list narrows
    it further: a rule applies to the identities in both)."""


class ApplicationRuleCollection(_Collection):
    rules: Annotated[Sequence[ApplicationRule], Packed(ApplicationRule, "targets")] = Field(
        default_factory=list)
    """A list of rules; from `packed.PACK_AT` rules a packed `RuleList` (a big policy
    fits in memory that way), read the same way."""


class NetworkRuleCollection(_Collection):
    rules: Annotated[Sequence[NetworkRule], Packed(NetworkRule, "destinations")] = Field(
        default_factory=list)


class ServiceEndpointPolicy(_Strict):
    """Storage egress only to listed accounts and aliases (semantics §6)."""

    name: Name
    service: Literal["Microsoft.Storage"] = "Microsoft.Storage"
    resources: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_RESOURCE)]
                    ] = Field(default_factory=list)
    aliases: list[Annotated[str, StringConstraints(max_length=MAX_NAME * 2)]] = Field(
        default_factory=list)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not alias.startswith("/services/"):
                raise ValueError(f"alias {alias!r} must start with /services/")
        return value


class Assertion(_Strict):
    """A request (one `simulate` line) the policy must decide as `expect`: checked on every
    write, which is refused when one fails, and by `egressguard test` in CI."""

    request: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    expect: Action
    name: Name | None = None

    @field_validator("request")
    @classmethod
    def _parses(cls, value: str) -> str:
        from egressguard.engine.query import parse_request_line

        parse_request_line(value.strip())  # ValueError: the reason, at this field's path
        return value

    @property
    def label(self) -> str:
        return self.name or self.request


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS: dict[str, float] = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
               "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10,
               "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?", re.IGNORECASE)
_DURATION_UNITS: dict[str, float] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_BUDGET_BYTES = 2**50      # a pebibyte: beyond it a budget limits nothing
MAX_BUDGET_WINDOW = 366 * 86400.0


def _with_unit(value: Any, pattern: re.Pattern[str], units: dict[str, float],
               what: str, hint: str) -> Any:
    """A number with an optional unit (`10MB`, `15m`) as the number times the unit."""
    if not isinstance(value, str):
        return value
    found = pattern.fullmatch(value.strip()) if len(value) <= 32 else None
    if not found:
        raise ValueError(f"{what} {value!r}: expected {hint}")
    return float(found.group(1)) * units[(found.group(2) or "").lower()]


def _byte_size(value: Any) -> Any:
    """`10MB`, `5 MiB`, `1500` (bytes): decimal and binary units, as operators write them."""
    size = _with_unit(value, _SIZE, _SIZE_UNITS, "size",
                      "bytes, or a number with a unit (kB, MB, GB, KiB, MiB, GiB)")
    return int(size) if isinstance(size, float) else size


def _duration(value: Any) -> Any:
    """`30s`, `15m`, `1h`, `7d` or seconds."""
    return _with_unit(value, _DURATION, _DURATION_UNITS, "duration",
                      "seconds, or a number with s, m, h or d")


def _budget_destination(raw: str) -> str:
    """`*`, an IP/CIDR (canonical network) or a host pattern; no service tags (a budget
    counts bytes per connection, decided by the name or address connected to)."""
    text = raw.strip()
    if is_service_tag(text):
        raise ValueError(f"destination {raw!r}: service tags cannot carry a budget; "
                         "list host patterns or CIDRs")
    return _destination(text)


BudgetDestination = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HOST),
                              AfterValidator(_budget_destination)]
IdentityName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME * 2)]
ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(gt=0, le=MAX_BUDGET_BYTES)]
Duration = Annotated[float, BeforeValidator(_duration),
                     Field(gt=0, le=MAX_BUDGET_WINDOW)]


BudgetKey = Literal["destination", "identity"]
_PER_DEFAULT: tuple[BudgetKey, ...] = ("destination", "identity")


class Budget(_Strict):
    """At most `max_bytes` to the destinations listed within `window` seconds, counted
    separately for each destination and identity (`per`). A connection or exchange that
    would exceed it is cut, and later ones are refused until the window resets; with
    `report_only` both are only recorded. Counted while the connection is open, so one
    long tunnel cannot carry more than the budget (enforce/budget.py)."""

    name: Name
    destinations: list[BudgetDestination] = Field(min_length=1, max_length=1000)
    identities: list[IdentityName] = Field(default_factory=list, max_length=1000)
    """Only connections of these identities count; empty: every connection."""
    per: list[BudgetKey] = Field(default_factory=lambda: list(_PER_DEFAULT), max_length=2)
    """What gets its own allowance: each destination host, each identity, both (the
    default) or neither (`[]`: one allowance shared by everything the budget matches)."""
    direction: Literal["up", "down", "both"] = "up"
    """Which bytes count: `up` (sent by the workload: exfiltration), `down`, or both."""
    max_bytes: ByteSize
    window: Duration = 3600.0
    report_only: bool = False
    description: Description = ""

    @field_validator("identities")
    @classmethod
    def _identity_names(cls, value: list[str]) -> list[str]:
        """Only names an identity can have (those of rules' `identities:`): the budget
        would silently count nothing for any other."""
        for name in value:
            if len(name) > MAX_NAME or not _NAME.fullmatch(name):
                raise ValueError(f"{name[:MAX_NAME]!r} can never be a workload identity's "
                                 "name (letters, digits, '_', '.' and '-', at most "
                                 f"{MAX_NAME}, starting with a letter, digit or '_'), so "
                                 "the budget would count nothing for it")
        return value

    @field_validator("per")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("per: each of destination and identity at most once")
        return value
EndpointType = Literal["eventhub", "servicebus_queue", "servicebus_topic", "storage_container",
                       "builtin", "file_upload", "identity_export"]
EndpointProtocol = Literal["amqp", "amqp_websockets", "kafka", "https"]
# What each endpoint type can egress over (the first is its default): Event Hubs and the
# built-in (Event Hub-compatible) endpoint take AMQP, AMQP over WebSockets and Kafka,
# Service Bus AMQP and AMQP over WebSockets, storage HTTPS.
ENDPOINT_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "eventhub": ("amqp", "amqp_websockets", "kafka"),
    "builtin": ("amqp", "amqp_websockets", "kafka"),
    "servicebus_queue": ("amqp", "amqp_websockets"),
    "servicebus_topic": ("amqp", "amqp_websockets"),
    "storage_container": ("https",),
    "file_upload": ("https",),
    "identity_export": ("https",),
}
RouteSource = Literal["DeviceMessages", "TwinChangeEvents", "DeviceLifecycleEvents",
                      "DeviceJobLifecycleEvents", "DigitalTwinChangeEvents",
                      "DeviceConnectionStateEvents", "Invalid"]


def _exact_host(value: str) -> str:
    if "*" in value or value.startswith("."):
        raise ValueError(f"endpoint host {value!r} must be one name, not a pattern")
    return value


class Endpoint(_Strict):
    """An IoT Hub egress destination: a routing custom endpoint (Event Hubs, a Service Bus
    queue or topic, a storage container), the built-in endpoint, or the storage that file
    upload and identity export write to. Where it connects is derived from `host` and
    `protocol` (`egressguard.engine.routes`), not written."""

    name: Name
    type: EndpointType
    host: Annotated[HostPattern, AfterValidator(_exact_host)]
    entity: Annotated[str, StringConstraints(max_length=260)] = ""
    """The event hub, queue, topic or container name (shown, not matched)."""
    protocol: EndpointProtocol | None = None

    @model_validator(mode="after")
    def _protocol_fits(self) -> Endpoint:
        allowed = ENDPOINT_PROTOCOLS[self.type]
        if self.protocol is not None and self.protocol not in allowed:
            raise ValueError(f"endpoint {self.name!r}: a {self.type} endpoint takes "
                             f"{', '.join(allowed)}, not {self.protocol}")
        return self

    @property
    def wire(self) -> str:
        """The protocol it egresses over (the type's default unless one is given)."""
        return self.protocol or ENDPOINT_PROTOCOLS[self.type][0]


class Route(_Strict):
    """A message route: messages of `source` go to the endpoint named `endpoint`."""

    name: Name
    source: RouteSource = "DeviceMessages"
    endpoint: Name
    enabled: bool = True


ClusterKind = Literal["generic", "iothub", "dataexplorer"]
CLUSTER_KINDS: tuple[str, ...] = ("generic", "iothub", "dataexplorer")


class Sku(_Strict):
    """The ARM `sku` of the resource a cluster stands for (IoT Hub `S1`, a Data Explorer
    size): kept and answered back so that a seed's PUT body round-trips; it decides
    nothing."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    tier: Annotated[str, StringConstraints(max_length=64)] | None = None
    capacity: int | None = Field(None, ge=0, le=1_000_000)
    size: Annotated[str, StringConstraints(max_length=64)] | None = None
    family: Annotated[str, StringConstraints(max_length=64)] | None = None


SpiffeId = Annotated[str, StringConstraints(min_length=10, max_length=2048,
                                            pattern=r"^spiffe://[a-z0-9._-]+(/[^?#]*)?$")]
CommonName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class IdentityMethods(_Strict):
    """How a workload proves it is this identity, strongest first: a client certificate
    (SPIFFE URI SAN or subject CN) on the TLS listener, a signed workload token (JWT `sub`
    claim) in `Proxy-Authorization: Bearer`, and, weakest, its source address. A proxy
    secret (`Proxy-Authorization: Basic`) is issued by `egressguard identity create`
    and lives in the store, never in a policy file."""

    spiffe_ids: list[SpiffeId] = Field(default_factory=list, max_length=64)
    common_names: list[CommonName] = Field(default_factory=list, max_length=64)
    jwt_subjects: list[Subject] = Field(default_factory=list, max_length=64)
    sources: list[Source] = Field(default_factory=list, max_length=256)
    description: Description = ""
    enabled: bool = True


class Policy(_Strict):
    """One cluster's complete outbound-access policy."""

    kind: ClusterKind = "generic"
    """What the allowed-FQDN list opens (semantics §4 step 6): `iothub` the IoT Hub
    endpoint protocols (HTTPS 443, AMQP 5671, Kafka 9093; no callouts), `dataexplorer`
    and `generic` HTTP/HTTPS 80/443 and callouts. It also picks how the resource answers
    `restrictOutboundNetworkAccess` (a boolean for IoT Hub, Enabled/Disabled otherwise)."""
    sku: Sku | None = None
    callout_enforcement: Literal["library", "gateway"] = "library"
    """Where the callout layers apply: `library` only to callouts an application asks
    about (`egressguard.callout.Guard`); `gateway` also to the connections the gateway
    proxies, by the protocol family each callout type uses (semantics §4 step 3)."""
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=1000)
    routes: list[Route] = Field(default_factory=list, max_length=1000)
    restrict_outbound_network_access: ArmBool = Field(
        default=False,
        validation_alias=AliasChoices("restrict_outbound_network_access",
                                      "restrictOutboundNetworkAccess"))
    allowed_fqdn_list: list[HostPattern] = Field(
        default_factory=list,
        validation_alias=AliasChoices("allowed_fqdn_list", "allowedFqdnList"))
    report_only: bool = False
    callouts: list[CalloutRule] = Field(default_factory=list)
    application_rule_collections: list[ApplicationRuleCollection] = Field(default_factory=list)
    network_rule_collections: list[NetworkRuleCollection] = Field(default_factory=list)
    service_endpoint_policies: list[ServiceEndpointPolicy] = Field(default_factory=list)
    trusted_ranges: list[TrustedRange] = Field(default_factory=list)
    """Private CIDRs that names allowed by name rules may resolve into (the address guard
    lets them through for such names); the ranges themselves stay closed to flows and IP
    literals unless a network rule names them."""
    assertions: list[Assertion] = Field(default_factory=list, max_length=1000)
    budgets: list[Budget] = Field(default_factory=list, max_length=1000)
    identities: dict[Name, IdentityMethods] = Field(default_factory=dict, max_length=4096)
    """Workload identities by name (rules scope themselves with `identities: [name]`)."""
    require_identity: bool = False
    """Unauthenticated requests are refused (the gateway answers 407 with
    `Proxy-Authenticate`; the DNS filter denies a source no identity's CIDR covers)."""

    @property
    def immutable_callouts(self) -> tuple[CalloutRule, ...]:
        """The built-in layer; it cannot be edited, only dropped by restricting access."""
        return IMMUTABLE_CALLOUTS

    @model_validator(mode="after")
    def _routes_name_endpoints(self) -> Policy:
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique")
        for route in self.routes:
            if route.endpoint not in names:
                raise ValueError(f"route {route.name!r}: no endpoint named "
                                 f"{route.endpoint!r}")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        for kind, collections in (("application", self.application_rule_collections),
                                  ("network", self.network_rule_collections)):
            _refuse_duplicate(collections, f"{kind} rule collection")
        claimed: dict[str, str] = {}
        for name, methods in self.identities.items():
            for kind, values in (("SPIFFE ID", methods.spiffe_ids),
                                 ("common name", methods.common_names),
                                 ("JWT subject", methods.jwt_subjects),
                                 ("source", methods.sources)):
                for value in values:
                    other = claimed.setdefault(f"{kind}:{value}", name)
                    if other != name:
                        raise ValueError(f"{kind} {value!r} maps to both identity "
                                         f"{other!r} and {name!r}")
        return self

    @field_validator("budgets")
    @classmethod
    def _unique_budgets(cls, value: list[Budget]) -> list[Budget]:
        _refuse_duplicate(value, "budget")  # at the budgets' line, not the document's
        return value


def _refuse_duplicate(items: list[Any], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"duplicate {what} {item.name!r}")
        seen.add(item.name)

IMMUTABLE_CALLOUTS: tuple[CalloutRule, ...] = tuple(
    CalloutRule(callout_type=t, uri_regex=r, can_call=c) for t, r, c in IMMUTABLE_CALLOUT_ROWS)
