"""Name resolution for the gateway: static entries first, then the system resolver.

Every address returned is passed to the engine's address guard and the gateway connects
only to one of those addresses, so a name cannot be re-resolved to something else between
the check and the connection (DNS rebinding). Static entries (`--resolve`, a hosts file)
make offline and air-gapped deployments and tests deterministic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from egressguard.engine import InvalidHost, normalize_host
from egressguard.engine.normalize import IPAddress
from egressguard.errors import Unavailable


class ResolveError(OSError, Unavailable):
    """The name has no usable address (the message is the reason)."""


def parse_resolve(entries: Iterable[str]) -> dict[str, list[IPAddress]]:
    """`NAME=IP[,IP...]` entries (repeatable) -> {normalised name: addresses}."""
    table: dict[str, list[IPAddress]] = {}
    for entry in entries:
        name, sep, ips = entry.partition("=")
        if not sep or not name or not ips:
            raise ValueError(f"--resolve {entry!r}: expected NAME=IP")
        key = _key(name)
        for ip in ips.split(","):
            try:
                table.setdefault(key, []).append(ipaddress.ip_address(ip.strip().strip("[]")))
            except ValueError:
                raise ValueError(f"--resolve {entry!r}: {ip!r} is not an IP address") from None
    return table


def parse_hosts_file(path: Path) -> dict[str, list[IPAddress]]:
    """/etc/hosts format: `IP name [aliases...]`, `#` comments."""
    table: dict[str, list[IPAddress]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            ip = ipaddress.ip_address(fields[0])
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: {fields[0]!r} is not an IP") from None
        for name in fields[1:]:
            table.setdefault(_key(name), []).append(ip)
    return table


def _key(name: str) -> str:
    try:
        return normalize_host(name.strip()).name
    except InvalidHost as exc:
        raise ValueError(f"{name!r}: {exc}") from None


class Resolver:
    """Static table, then (unless `system=False`) `loop.getaddrinfo`."""

    def __init__(self, static: Mapping[str, list[IPAddress]] | None = None, *,
                 system: bool = True) -> None:
        self.static = {k: tuple(v) for k, v in (static or {}).items()}
        self.system = system

    def known(self, name: str) -> tuple[IPAddress, ...] | None:
        """The static addresses of `name` (no waiting), or None when it must be looked up."""
        return self.static.get(name)

    async def resolve(self, name: str, port: int) -> tuple[IPAddress, ...]:
        """Addresses for a normalised name, in the order to try them."""
        found = self.static.get(name)
        if found is not None:
            return found
        if not self.system:
            raise ResolveError(f"cannot resolve {name}: not in the static table")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {name}: {exc}") from None
        out: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in out:
                out.append(ip)
        if not out:
            raise ResolveError(f"cannot resolve {name}: no addresses")
        return tuple(out)
