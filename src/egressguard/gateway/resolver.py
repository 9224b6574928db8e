"""Name resolution for the gateway: static entries first, then a cache, then the system
resolver (or DNS servers asked directly).

The cache honours TTLs: answers live for their TTL clamped to [`min_ttl`, `max_ttl`];
failures (NXDOMAIN, no address, SERVFAIL) are cached too (negative caching, RFC 2308: the
SOA's TTL when the answer carries one, at most `negative_ttl`). A hit costs a dict lookup
and a clock read: `known()` answers it synchronously and `resolve()` returns without an
await, so there is no task or thread hop. `getaddrinfo` reports no TTL, so its answers live
for the fixed `system_ttl`; pass `nameservers` (e.g. `nameservers_from_resolv_conf()`) and
`ask=egressguard.dns.client.ask` to ask those servers over UDP with the DNS filter's wire
code and get the real TTLs. The default stays `getaddrinfo`, which also honours /etc/hosts
and nsswitch.

Every address returned is passed to the engine's address guard and the gateway connects
only to one of those addresses, so a name cannot be re-resolved to something else between
the check and the connection (DNS rebinding). Static entries (`--resolve`, a hosts file)
make offline and air-gapped deployments and tests deterministic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
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


def nameservers_from_resolv_conf(path: Path = Path("/etc/resolv.conf")
                                 ) -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf, as (address, 53)."""
    found: list[tuple[str, int]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append((str(ipaddress.ip_address(fields[1].split("%", 1)[0])), 53))
            except ValueError:
                continue
    return found


# Ask one server for one name: (server, name, qtype, timeout) -> (addresses, TTL); raises
# OSError when the server gives no usable answer. `egressguard.dns.client.ask` is one.
Ask = Callable[[tuple[str, int], str, int, float],
               Awaitable[tuple[tuple[IPAddress, ...], int | None]]]
_Entry = tuple[float, tuple[IPAddress, ...] | str]  # (expiry, addresses | failure reason)


class Resolver:
    """Static table, then the TTL cache, then (unless `system=False`) `loop.getaddrinfo`
    or the DNS servers in `nameservers`. TTLs are in seconds."""

    def __init__(self, static: Mapping[str, list[IPAddress]] | None = None, *,
                 system: bool = True, nameservers: Sequence[tuple[str, int]] = (),
                 system_ttl: float = 30.0, min_ttl: float = 5.0, max_ttl: float = 3600.0,
                 negative_ttl: float = 30.0, max_entries: int = 10000, timeout: float = 2.0,
                 ask: Ask | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if nameservers and ask is None:
            raise ValueError("nameservers need an `ask` function (egressguard.dns.client.ask)")
        self.ask = ask
        self.static = {k: tuple(v) for k, v in (static or {}).items()}
        self.system = system
        self.nameservers = list(nameservers)
        self.system_ttl, self.min_ttl, self.max_ttl = system_ttl, min_ttl, max_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, _Entry] = {}
        # One object per address across answers: a connection opened for one name is
        # matched against another name's addresses by `in`, which then stops at identity
        # instead of calling `IPv4Address.__eq__` (Python code) on every request.
        self._same: dict[IPAddress, IPAddress] = {}
        self.static = {k: self._interned(v) for k, v in self.static.items()}
        self._inflight: dict[str, asyncio.Future[tuple[IPAddress, ...]]] = {}

    def known(self, name: str) -> tuple[IPAddress, ...] | None:
        """The addresses of `name` without waiting (static or a fresh cached answer), or
        None when it must be looked up."""
        found = self.static.get(name)
        if found is not None:
            return found
        entry = self._cache.get(name)
        if entry is not None and entry[0] > self.clock() and not isinstance(entry[1], str):
            return entry[1]
        return None

    async def resolve(self, name: str, port: int) -> tuple[IPAddress, ...]:
        """Addresses for a normalised name, in the order to try them."""
        found = self.static.get(name)
        if found is not None:
            return found
        entry = self._cache.get(name)
        if entry is not None and entry[0] > self.clock():
            if isinstance(entry[1], str):
                raise ResolveError(entry[1])
            return entry[1]
        if not self.system:
            raise ResolveError(f"cannot resolve {name}: not in the static table")
        waiting = self._inflight.get(name)
        if waiting is not None:  # one lookup per name at a time; the others wait for it
            return await asyncio.shield(waiting)
        future: asyncio.Future[tuple[IPAddress, ...]] = \
            asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            addresses, ttl = await self._lookup(name, port)
        except ResolveError as exc:
            # A definite "no such name" lives for its negative TTL; a failure (timeout,
            # SERVFAIL) only for `min_ttl`, so a flapping server is not remembered long.
            ttl = exc.ttl if isinstance(exc, NegativeAnswer) else self.min_ttl
            self._store(name, str(exc), ttl)
            future.set_exception(ResolveError(str(exc)))
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise ResolveError(str(exc)) from None
        except BaseException as exc:
            future.set_exception(ResolveError(f"cannot resolve {name}: {exc!r}"))
            future.exception()
            raise
        finally:
            self._inflight.pop(name, None)
        addresses = self._interned(addresses)
        self._store(name, addresses, ttl)
        future.set_result(addresses)
        return addresses

    def _interned(self, addresses: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        same = self._same
        if len(same) >= 4 * self.max_entries:
            same.clear()
        return tuple([same.setdefault(ip, ip) for ip in addresses])

    def _store(self, name: str, value: tuple[IPAddress, ...] | str, ttl: float | None) -> None:
        now = self.clock()
        if isinstance(value, str):
            life = min(self.negative_ttl, max(self.min_ttl, ttl if ttl is not None
                                              else self.negative_ttl))
        else:
            life = min(self.max_ttl, max(self.min_ttl, ttl if ttl is not None
                                         else self.system_ttl))
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[name] = (now + life, value)

    async def _lookup(self, name: str, port: int) -> tuple[tuple[IPAddress, ...], float | None]:
        if self.nameservers:
            return await self._ask_servers(name)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                raise NegativeAnswer(f"cannot resolve {name}: {exc}", None) from None
            raise ResolveError(f"cannot resolve {name}: {exc}") from None
        except (OSError, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {name}: {exc}") from None
        out: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in out:
                out.append(ip)
        if not out:
            raise ResolveError(f"cannot resolve {name}: no addresses")
        return tuple(out), None

    async def _ask_servers(self, name: str) -> tuple[tuple[IPAddress, ...], float | None]:
        """A and AAAA from the first server that answers; the smallest TTL counts."""
        error = ResolveError(f"cannot resolve {name}: no DNS server configured")
        for server in self.nameservers:
            try:
                answers = await asyncio.gather(self._ask(server, name, 1),
                                               self._ask(server, name, 28))
            except ResolveError as exc:
                error = exc
                continue
            addresses = tuple(a for found, _ in answers for a in found)
            ttls = [t for found, t in answers if found and t is not None]
            if addresses:
                return addresses, float(min(ttls)) if ttls else None
            negatives = [t for _, t in answers if t is not None]
            raise NegativeAnswer(f"cannot resolve {name}: no addresses",
                            float(min(negatives)) if negatives else None)
        raise error

    async def _ask(self, server: tuple[str, int], name: str, qtype: int
                   ) -> tuple[tuple[IPAddress, ...], int | None]:
        """(addresses, TTL) of one question, through the injected `ask`."""
        assert self.ask is not None
        try:
            return await self.ask(server, name, qtype, self.timeout)
        except OSError as exc:
            raise ResolveError(str(exc)) from None


class NegativeAnswer(ResolveError):
    """A definite "no address" answer, cached for `ttl` (None: the default)."""

    def __init__(self, message: str, ttl: float | None) -> None:
        super().__init__(message)
        self.ttl = ttl
