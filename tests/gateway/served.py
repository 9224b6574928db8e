"""Hostile tests drive `egressguard serve` as its own process, so what they measure (its
open fds and RSS from /proc, the tracebacks in its log) is the gateway's alone.

Upstreams here are plain threaded sockets: `RecordingUpstream` parses what the gateway
forwards with h11 (an HTTP parser independent of the gateway's llhttp) and records every
request it sees; `ScriptedUpstream` runs one function per accepted connection, for
upstreams that misbehave on purpose.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11

EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
# Everything on 127.0.0.1 (any port) is allowed; every other destination is denied.
LOOPBACK_ONLY = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: test-upstreams
    priority: 100
    rules:
      - name: loopback-one
        destinations: [127.0.0.1/32]
        protocols: [TCP]
        match_resolved_names: true
"""


# -- the gateway process and its footprint -----------------------------------------------

def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Footprint:
    fds: int
    rss_kib: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        return cls(open_fds(pid), rss_kib(pid))


def assert_back_to(pid: int, baseline: Footprint, *, fd_slack: int = 0,
                   rss_slack_mib: int = 48, settle: float = 8.0) -> Footprint:
    """fds (within `fd_slack`) and RSS (within `rss_slack_mib`: CPython keeps freed arenas)
    of `pid` return to `baseline`, waiting up to `settle` seconds for closes in flight."""
    end = time.monotonic() + settle
    while True:
        now = Footprint.of(pid)
        fds_ok = now.fds <= baseline.fds + fd_slack
        rss_ok = now.rss_kib <= baseline.rss_kib + rss_slack_mib * 1024
        if (fds_ok and rss_ok) or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert fds_ok, f"fd leak: {baseline.fds} open before, {now.fds} after"
    assert rss_ok, f"RSS {baseline.rss_kib} KiB before, {now.rss_kib} KiB after"
    return now


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    baseline: Footprint = field(default=Footprint(0, 0))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def footprint(self) -> Footprint:
        return Footprint.of(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_traceback(self) -> None:
        text = self.log()
        at = text.find("Traceback")
        assert at < 0, text[max(0, at - 500):at + 3000]

    def assert_back_to_baseline(self, *, fd_slack: int = 0, rss_slack_mib: int = 48,
                                settle: float = 8.0) -> Footprint:
        """After a hostile test: the gateway's footprint is back to its baseline
        (`assert_back_to`) and its log has no traceback."""
        assert self.proc.poll() is None, f"gateway exited: {self.log()[-4000:]}"
        now = assert_back_to(self.pid, self.baseline, fd_slack=fd_slack,
                             rss_slack_mib=rss_slack_mib, settle=settle)
        self.assert_no_traceback()
        return now

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_served(tmp: Path, *options: str, policy: str = LOOPBACK_ONLY) -> Served:
    """`egressguard serve --policy` (no API, no audit) with `options`; once it answers,
    its footprint is taken as the baseline."""
    path = tmp / f"policy-{time.monotonic_ns()}.yaml"
    path.write_text(policy)
    log_path = path.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            # --workers 1: the footprint and log measured are the gateway's own process.
            [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--no-audit",
             "--no-system-resolver", "--workers", "1", "--policy", str(path), *options],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp)})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "listening on 127.0.0.1:" in first, log_path.read_text()
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain the rest
    served = Served(proc, int(first.rsplit(":", 1)[1].split()[0]), log_path)
    # Warm up (first request imports and caches) before the baseline is taken.
    for _ in range(3):
        exchange(served.port, b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
    time.sleep(0.2)
    served.baseline = served.footprint()
    return served


# -- clients --------------------------------------------------------------------------------

def exchange(port: int, data: bytes, *, timeout: float = 5.0, half_close: bool = True,
             source: str | None = None) -> bytes:
    """Send `data` on a new connection (then FIN) and read until the gateway closes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        out = b""
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length body: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


# -- upstreams -------------------------------------------------------------------------------

class _Threaded:
    """Accepts on 127.0.0.1 and runs `self.handle(conn)` per connection in a thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed_by_peer = 0   # connections the gateway closed (EOF seen here)
        self.open = 0
        self._lock = threading.Lock()
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handle(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def saw_eof(self) -> None:
        with self._lock:
            self.closed_by_peer += 1

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        self._stopping = True
        self.sock.close()


class RecordingUpstream(_Threaded):
    """An origin that answers every request `200 ok` (keep-alive) and records what reached
    it; a connection idle for `idle` seconds is closed (so the gateway's pool drains)."""

    def __init__(self, idle: float = 0.5) -> None:
        self.idle = idle
        self.requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.errors: list[str] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(self.idle)
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        request: h11.Request | None = None
        body = b""
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                self.errors.append(f"{exc}")
                return
            if event is h11.NEED_DATA:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    data = None
                if not data:
                    leftover = parser.trailing_data[0]
                    if leftover:  # the gateway sent bytes that do not form a request
                        # (a request cut short, the gateway aborting, is no such thing)
                        self.errors.append(f"{parser.their_state}: {leftover[:200]!r}")
                    if data is not None:
                        self.saw_eof()
                    return
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.requests.append((request.method, request.target,
                                      list(request.headers), body))
                reply = b"ok %d" % len(body)
                out = parser.send(h11.Response(status_code=200, headers=[
                    ("Content-Length", str(len(reply)))])) or b""
                if request.method != b"HEAD":
                    out += parser.send(h11.Data(reply)) or b""
                conn.sendall(out + (parser.send(h11.EndOfMessage()) or b""))
                if parser.our_state is h11.MUST_CLOSE:
                    return
                parser.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.saw_eof()
                return


class ScriptedUpstream(_Threaded):
    """Runs `script(conn)` for every accepted connection (a misbehaving origin)."""

    def __init__(self, script: Callable[[ScriptedUpstream, socket.socket], None]) -> None:
        self.script = script
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.script(self, conn)


def read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def until_eof(up: _Threaded, conn: socket.socket, timeout: float = 30.0) -> None:
    """Hold the connection until the gateway closes it (counted in `closed_by_peer`)."""
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return
    except OSError:
        pass  # a reset is a close too
    up.saw_eof()


def started(factory: Callable[[], _Threaded]) -> Iterator[_Threaded]:
    server = factory()
    try:
        yield server
    finally:
        server.stop()
