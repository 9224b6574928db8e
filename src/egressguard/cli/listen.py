"""One sentence for a listening socket that cannot bind, shared by every server command
(`serve`, `dns serve`, `api`): the cause in words and the option that fixes it."""

from __future__ import annotations

import errno
import socket


def bind_failure(what: str, host: str, port: int, exc: OSError, option: str) -> str:
    if exc.errno is None and isinstance(exc.__cause__, OSError):  # uvloop wraps the bind's
        exc = exc.__cause__
    if exc.errno == errno.EADDRINUSE:
        cause = "the address is already in use"
        hint = f"another process listens there; pick another port with {option}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        cause = "no local interface has that address"
        hint = f"use a local address with {option}"
    elif exc.errno == errno.EACCES:
        cause = "permission denied"
        hint = f"ports below 1024 need privileges; pick another with {option}"
    else:
        cause = exc.strerror or str(exc)
        hint = f"check {option}"
    return f"{what} cannot listen on {host}:{port}: {cause} (hint: {hint})"


def listen_tcp(host: str, port: int, *, reserve: bool = False) -> socket.socket:
    """A listening TCP socket, bound before any server starts, so a taken port is an
    ordinary `OSError` the command turns into one line (`bind_failure`). `reserve`: bound
    with SO_REUSEPORT and not listening, holding the port (0: picking it) for processes
    that each listen on it with SO_REUSEPORT (`serve --workers`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reserve:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if not reserve:
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock
