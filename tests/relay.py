"""A TCP relay in front of a real database server that a test can cut and restore: the
store really becomes unreachable (pooled connections reset, new ones refused), as a
database server that goes away does (SQLite is a local file: it does not). The
`pg_relay` fixture (tests/conftest.py) puts one in front of the test's PostgreSQL
database."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """127.0.0.1:port -> target; `cut()` resets every connection and refuses new ones,
    `restore()` accepts again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        """Listen (again, on the same port) and relay new connections."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every relayed one."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close alone won't
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut


    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def relayed_url(url: str, relay: Relay) -> str:
    """`url` (a PostgreSQL URL) reaching its server through `relay`."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(host="127.0.0.1", port=relay.port).render_as_string(
        hide_password=False)
