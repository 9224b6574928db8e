"""A real Squid on loopback running an exported config, for the agreement tests.

Squid never does DNS or connects out: names come from a private `hosts_file`, the only
nameserver is 127.0.0.1 (nothing listens there) and every allowed request goes to a parent
proxy on loopback that answers 200 (`never_direct allow all`). A 403 with Squid's
ERR_ACCESS_DENIED is a denial; anything else means Squid let the request through.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQUID = shutil.which("squid") or "/usr/sbin/squid"


class Parent:
    """The loopback upstream: reads one request head, answers 200, closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                if data.startswith(b"CONNECT"):
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    conn.recv(1)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Squid:
    def __init__(self, port: int) -> None:
        self.port = port

    def status(self, head: bytes) -> tuple[int, bytes]:
        """Send one request head; (status code, response head)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
            s.sendall(head)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        line = data.split(b"\r\n", 1)[0].split()
        return (int(line[1]) if len(line) > 1 and line[1].isdigit() else 0), data

    def denies(self, head: bytes) -> bool:
        code, data = self.status(head)
        assert code != 0, f"no answer from squid for {head!r}"
        return code == 403 and b"ERR_ACCESS_DENIED" in data


@contextmanager
def running_squid(config: str, hosts: dict[str, str], parent: Parent) -> Iterator[Squid]:
    """Squid in the foreground (-N) with `config` (the exported access rules), in a
    private directory the `proxy` user Squid drops to can reach."""
    tmp = Path(tempfile.mkdtemp(prefix=f"egressguard-squid-{os.getpid()}-"))
    os.chmod(tmp, 0o777)
    (tmp / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    port = _free_port()
    conf = tmp / "squid.conf"
    conf.write_text(f"""\
http_port 127.0.0.1:{port}
pid_filename {tmp}/squid.pid
cache_log {tmp}/cache.log
access_log none
cache_store_log none
cache deny all
cache_mem 4 MB
coredump_dir {tmp}
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
hosts_file {tmp}/hosts
dns_nameservers 127.0.0.1
dns_timeout 2 seconds
never_direct allow all
cache_peer 127.0.0.1 parent {parent.port} 0 no-query no-digest default name=up
forwarded_for delete
via off
{config}
""")
    check = subprocess.run([SQUID, "-k", "parse", "-f", str(conf)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stderr[-3000:]
    proc = subprocess.Popen([SQUID, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    log = (tmp / "cache.log").read_text() if (tmp / "cache.log").exists() \
                        else ""
                    raise AssertionError(f"squid did not start: {err[-2000:]}{log[-2000:]}"
                                         ) from None
                time.sleep(0.05)
        yield Squid(port)
    finally:
        proc.kill()  # a graceful stop takes 2 s; nothing here needs one
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)
