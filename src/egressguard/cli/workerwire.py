"""The wire between `serve --workers N` and each worker: length-prefixed frames on a Unix
socket pair, both ends ours (the parent spawns the worker and hands it the socket).

Frames are pickled tuples whose first item says what they are:

* parent -> worker: `("hello", config)`, `("policy", policy, version, source)`,
  `("suspend", reason)`, `("resume",)`, `("ack", seq)`;
* worker -> parent: `("ready", addresses)`, `("failed", line)`, `("active", version)`,
  `("events", last_seq, urgent, count, packed)`.

`packed` is `count` events as the audit writer reads them (`audit.log.pack_raws`: one
marshalled list of field tuples), so the parent forwards the bytes to its writer as they
came (`AuditLog.forward`) instead of decoding and re-encoding every event.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024   # a frame larger than this is a broken peer, not data


class Wire:
    """One end of the socket pair: `send` from any thread, `receive` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._file = sock.makefile("rb")

    def send(self, *message: Any) -> bool:
        """False once the other end is gone (the caller's reader sees the EOF too)."""
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self.sock.sendall(_LEN.pack(len(data)) + data)
        except OSError:
            return False
        return True

    def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None at the end of the stream (the peer is gone)."""
        try:
            head = self._file.read(_LEN.size)
            if len(head) < _LEN.size:
                return None
            size = _LEN.unpack(head)[0]
            if size > MAX_FRAME:
                return None
            body = self._file.read(size)
        except (OSError, ValueError):
            return None
        if len(body) < size:
            return None
        message: tuple[Any, ...] = pickle.loads(body)
        return message

    def close(self) -> None:
        for closing in (self._file.close, lambda: self.sock.shutdown(socket.SHUT_RDWR),
                        self.sock.close):
            with contextlib.suppress(OSError):
                closing()
