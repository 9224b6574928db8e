"""Replay: the audit log's recorded requests re-decided under a candidate policy (pure).

Each recorded decision (not close records) becomes the request the enforcement point
decided: its kind, normalised host, port, protocol, callout type, the address it
connected to and the client's address as the source. What was done then (`permitted`)
is compared with what the candidate would do; the flips are counted per direction,
client (identity, else address), kind and destination, most frequent first, so a
reviewer reads "newly denied: 41 requests from build-agent to pypi.org:443" before
applying a version. A record whose fields no longer parse is counted as skipped, never
guessed at.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egressguard.engine import Kind, Request, Snapshot
from egressguard.engine.request import split_host_port

_KINDS = {k.value: k for k in Kind}
_PEER_KINDS = (Kind.HTTP, Kind.CONNECT)  # the gateway records its peer with the port


def request_of(record: Mapping[str, Any]) -> Request | None:
    """The request a recorded decision was about, or None if it cannot be rebuilt."""
    kind = _KINDS.get(str(record.get("kind", "")))
    host = str(record.get("host") or "")
    if kind is None or not host:
        return None
    port = record.get("port")
    port = int(port) if isinstance(port, int) and 0 < port < 65536 else None
    try:
        address = record.get("resolved_address") or ""
        addresses = (ipaddress.ip_address(address),) if address else ()
        source = _client_ip(str(record.get("client_address") or ""), kind)
    except ValueError:
        return None
    protocol = str(record.get("protocol") or ("udp" if kind is Kind.DNS else "tcp"))
    if kind in (Kind.HTTP, Kind.CALLOUT):
        scheme = "https" if kind is Kind.CALLOUT or port == 443 else "http"
        shown = f"[{host}]" if ":" in host else host
        path = str(record.get("path") or "/")
        path = path if path.startswith("/") else "/"
        uri = f"{scheme}://{shown}{f':{port}' if port else ''}{path}"
        return Request(kind=kind, host="", uri=uri, port=port,
                       callout_type=str(record.get("callout_type") or "") or None,
                       addresses=addresses, source=source, protocol=protocol)
    return Request(kind=kind, host=host, port=port, protocol=protocol, addresses=addresses,
                   source=source)


def _client_ip(client: str, kind: Kind) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as recorded: a bare IP (DNS filter), or the gateway's peer
    with its port (kinds http and connect): `ip:port`, `[v6]:port`, and, as the gateway
    writes IPv6 peers, `v6:port` without brackets. `2001:db8::7:8080` is also a valid
    address on its own: for the gateway's kinds it is read as a peer with its port
    whenever what precedes the last `:` is an address (`2001:db8::5` is not split: its
    head `2001:db8:` is none). A link-local zone (`%eth0`) is dropped, as the gateway
    drops it from the source it decides on. ValueError if it is none of these."""
    if not client or client.startswith("<"):
        return None
    if kind in _PEER_KINDS and "[" not in client and client.count(":") > 1:
        address, _, port = client.rpartition(":")
        if port.isdigit() and _address(address) is not None:
            client = f"[{address}]:{port}"
    host, port = split_host_port(client)
    if port and not port.isdigit():
        raise ValueError(f"client address {client!r}: bad port")
    return ipaddress.ip_address(host.partition("%")[0])


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass
class Replay:
    decisions: int = 0
    skipped: int = 0
    truncated: bool = False
    newly_denied: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    newly_allowed: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = []
        for label, flips in (("newly denied", self.newly_denied),
                             ("newly allowed", self.newly_allowed)):
            for (who, kind, dest), count in flips.most_common():
                out.append(f"{label}: {count} request{'s' if count != 1 else ''} from "
                           f"{who} to {dest} ({kind})")
        return out

    def summary(self) -> str:
        denied, allowed = sum(self.newly_denied.values()), sum(self.newly_allowed.values())
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        if self.truncated:
            skipped += " (stopped at the record limit: narrow --since or --cluster)"
        return (f"{self.decisions} recorded decisions replayed: {denied} newly denied, "
                f"{allowed} newly allowed{skipped}")

    def as_dict(self) -> dict[str, Any]:
        def rows(flips: Counter[tuple[str, str, str]]) -> list[dict[str, Any]]:
            return [{"client": w, "kind": k, "destination": d, "requests": n}
                    for (w, k, d), n in flips.most_common()]
        return {"decisions": self.decisions, "skipped": self.skipped,
                "truncated": self.truncated,
                "newly_denied": rows(self.newly_denied),
                "newly_allowed": rows(self.newly_allowed), "summary": self.summary()}


MAX_DECISIONS = 2_000_000


def replay(records: Iterable[Mapping[str, Any]], candidate: Snapshot,
           limit: int = MAX_DECISIONS) -> Replay:
    """Re-decide every recorded decision under `candidate` and count what flips (at most
    `limit` decisions: then `truncated`)."""
    result = Replay()
    for record in records:
        if record.get("phase", "decision") not in ("decision", "exchange"):
            continue
        if result.decisions >= limit:
            result.truncated = True
            break
        result.decisions += 1
        request = request_of(record)
        if request is None:
            result.skipped += 1
            continue
        before, after = bool(record.get("permitted")), candidate.decide(request).permitted
        if before == after:
            continue
        # The identity, else the client's address without its (ephemeral) port.
        who = str(record.get("client_identity") or request.source
                  or record.get("client_address") or "unknown client")
        port = record.get("port")
        dest = f"{record['host']}:{port}" if port else str(record["host"])
        (result.newly_allowed if after else result.newly_denied)[
            (who, str(record["kind"]), dest)] += 1
    return result
