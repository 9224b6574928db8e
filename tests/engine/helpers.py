"""Small builders shared by the engine tests: a policy from YAML text, decided at once."""

from __future__ import annotations

import ipaddress
import textwrap

from egressguard.engine import Decision, Kind, References, Request, Snapshot, compile_policy
from egressguard.policy import load_policy_text


def snapshot(text: str = "{}", refs: References | None = None) -> Snapshot:
    return compile_policy(load_policy_text(textwrap.dedent(text)), refs)


def connect(snap: Snapshot, host: str, port: int = 443, *addresses: str,
            source: str | None = None) -> Decision:
    return snap.decide(Request(
        kind=Kind.CONNECT, host=host, port=port,
        addresses=tuple(ipaddress.ip_address(a) for a in addresses),
        source=ipaddress.ip_address(source) if source else None))


def url(snap: Snapshot, text: str, *addresses: str) -> Decision:
    return snap.decide(Request.from_url(
        text, addresses=tuple(ipaddress.ip_address(a) for a in addresses)))


def callout(snap: Snapshot, uri: str, callout_type: str) -> Decision:
    return snap.decide(Request.from_url(uri, kind=Kind.CALLOUT, callout_type=callout_type))


def flow(snap: Snapshot, address: str, port: int, protocol: str = "tcp",
         source: str | None = None) -> Decision:
    ip = ipaddress.ip_address(address)
    return snap.decide(Request(kind=Kind.FLOW, host=address, port=port, protocol=protocol,
                               addresses=(ip,),
                               source=ipaddress.ip_address(source) if source else None))
