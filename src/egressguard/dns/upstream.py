"""Asking the upstream resolver: UDP first, TCP when the answer is truncated.

Each UDP query uses its own connected socket (a fresh random source port next to a random
id), so an off-path attacker must guess both to inject an answer, and the kernel drops
datagrams from any other address.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from egressguard.errors import Unavailable


class UpstreamError(Unavailable):
    """The upstream did not answer usefully (timeout, refused connection, bad framing)."""


def _tc(packet: bytes) -> bool:
    return len(packet) >= 4 and bool(packet[2] & 0x02)


async def _udp(packet: bytes, qid: int, server: tuple[str, int], deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.connect(server)
        await loop.sock_sendall(sock, packet)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamError(f"upstream {server[0]}:{server[1]} timed out")
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535), remaining)
            except TimeoutError:
                raise UpstreamError(f"upstream {server[0]}:{server[1]} timed out") from None
            # Only an answer to our id counts; anything else is ignored until the deadline.
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and data[2] & 0x80:
                return data
    except OSError as exc:
        raise UpstreamError(f"upstream {server[0]}:{server[1]}: {exc}") from None
    finally:
        sock.close()


async def _tcp(packet: bytes, qid: int, server: tuple[str, int], deadline: float) -> bytes:
    loop = asyncio.get_running_loop()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(size)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    return data
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise UpstreamError(f"upstream {server[0]}:{server[1]} (tcp) timed out") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamError(f"upstream {server[0]}:{server[1]} (tcp): {exc}") from None


async def resolve(packet: bytes, qid: int, server: tuple[str, int], timeout: float,
                  tcp: bool = False) -> bytes:
    """Send `packet` (whose id is `qid`) to `server` and return the raw answer, retrying
    over TCP when the UDP answer has TC set. `timeout` bounds the whole exchange."""
    deadline = asyncio.get_running_loop().time() + timeout
    if not tcp:
        answer = await _udp(packet, qid, server, deadline)
        if not _tc(answer):
            return answer
    return await _tcp(packet, qid, server, deadline)
