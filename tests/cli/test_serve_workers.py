"""`egressguard serve --workers N`: gateway processes on one SO_REUSEPORT port, fed and
audited by the one parent. Which worker took a connection is read from /proc (the
accepted socket's inode among the worker's fds), so each test knows both served."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cli.serving import serve_process
from tests.gateway.conftest import Server

pytestmark = pytest.mark.timeout(180)
ALLOW_LOOPBACK = """\
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: lo
    priority: 100
    rules:
      - {name: lo, destinations: [127.0.0.1/32], protocols: [TCP],
         match_resolved_names: true}
"""
DENY_ALL = "restrict_outbound_network_access: Enabled\n"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    pids: list[int]
    api: str
    log_path: Path
    home: Path
    lines: tuple[str, ...] = ()  # what serve printed up to its audit log line

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log()}")


@contextlib.contextmanager
def serving(tmp: Path, policy: Path, *extra: str) -> Iterator[Served]:
    home = tmp / "home"
    log_path = tmp / "serve.log"
    with open(log_path, "w") as err, serve_process(
            home, "--policy", str(policy), "--listen", "127.0.0.1:0", "--workers", "2",
            "--no-system-resolver", *extra, stderr=err) as (proc, lines):
        found = re.search(r"listening on 127\.0\.0\.1:(\d+) .*pids ([\d ]+)\)", lines[0])
        assert found, lines
        api = next((m.group(1) for line in lines
                    if (m := re.search(r"REST API on (\S+)", line))), "")
        yield Served(proc, int(found.group(1)), [int(p) for p in found.group(2).split()],
                     api, log_path, home, tuple(lines))


def owner(conn: http.client.HTTPConnection, proxy_port: int, pids: list[int]) -> int:
    """The worker holding the accepted end of `conn` (read from /proc)."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inode = ""
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            local, remote = fields[1], fields[2]
            if local.endswith(f":{proxy_port:04X}") and remote.endswith(f":{client_port:04X}"):
                inode = fields[9]
    assert inode, "no accepted socket for the connection"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    raise AssertionError(f"no worker of {pids} holds socket {inode}")


def get(conn: http.client.HTTPConnection, url: str) -> int:
    conn.request("GET", url)
    response = conn.getresponse()
    response.read()
    return response.status


def spread(served: Served, url_of: object, tries: int = 60
           ) -> dict[int, list[tuple[str, int]]]:
    """Open keep-alive connections until every worker took some: {pid: [(url, status)]}.
    `url_of(i)` names the i-th request's URL."""
    assert callable(url_of)
    taken: dict[int, list[tuple[str, int]]] = {}
    conns = []
    try:
        for i in range(tries):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
            conns.append(conn)
            url = url_of(i)
            status = get(conn, url)
            taken.setdefault(owner(conn, served.port, served.pids), []).append((url, status))
            if len(taken) == len(served.pids) and i >= 7:
                break
    finally:
        for conn in conns:
            conn.close()
    return taken


def test_two_workers_share_one_port_and_both_take_connections(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api", "--no-audit") as served:
        assert len(set(served.pids)) == 2
        taken = spread(served, lambda i: f"http://127.0.0.1:{upstream.port}/{i}")
        assert set(taken) == set(served.pids), taken
        assert all(status == 200 for got in taken.values() for _, status in got)
        for pid in served.pids:
            served.wait_log(rf"gateway worker {pid}: policy \w+ in force")
    assert served.proc.returncode == 0


def test_sighup_puts_the_new_policy_in_force_in_every_worker(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api", "--no-audit") as served:
        url = f"http://127.0.0.1:{upstream.port}/"
        assert {s for got in spread(served, lambda i: url).values() for _, s in got} == {200}
        # Same size and mtime second as far as a watcher could tell: only SIGHUP says.
        policy.write_text(DENY_ALL)
        new = __import__("hashlib").sha256(DENY_ALL.encode()).hexdigest()[:12]
        served.proc.send_signal(signal.SIGHUP)
        for pid in served.pids:
            served.wait_log(rf"gateway worker {pid}: policy {new} in force")
        taken = spread(served, lambda i: url)
        assert set(taken) == set(served.pids)
        assert {status for got in taken.values() for _, status in got} == {403}, taken


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api", "--no-audit") as served:
        victim, survivor = served.pids
        os.kill(victim, signal.SIGKILL)
        # Once it is gone (the parent logs its exit) its listener has left the port's
        # group; a connection queued on it in its last instant is reset (SO_REUSEPORT).
        served.wait_log(rf"gateway worker {victim} exited \(status -9\)")
        url = f"http://127.0.0.1:{upstream.port}/"
        statuses = []
        end = time.monotonic() + 1.0   # while the parent restarts it, the other serves
        while time.monotonic() < end:
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
            statuses.append(get(conn, url))
            conn.close()
        assert set(statuses) == {200}, statuses
        replacement = 0
        end = time.monotonic() + 30
        while not replacement and time.monotonic() < end:
            after = served.log().split(f"gateway worker {victim} exited")[1]
            started = re.findall(r"gateway worker (\d+): policy \w+ in force", after)
            replacement = int(started[0]) if started else 0
            time.sleep(0.1)
        assert replacement not in (0, victim, survivor), served.log()
        served.pids = [survivor, replacement]
        taken = spread(served, lambda i: url)
        assert set(taken) == {survivor, replacement}


def test_metrics_endpoint_adds_up_every_worker(tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--api-listen", "127.0.0.1:0", "--no-audit") as served:
        taken = spread(served, lambda i: f"http://127.0.0.1:{upstream.port}/{i}")
        assert set(taken) == set(served.pids)
        total = sum(len(got) for got in taken.values())
        text = httpx.get(f"{served.api}/metrics", timeout=10).text
        allowed = re.search(r'egressguard_decisions_total\{[^}]*permitted="true"'
                            r'[^}]*verdict="allow"\} (\S+)', text)
        assert allowed, text
        assert float(allowed.group(1)) == total
        assert text.count("# TYPE egressguard_decisions_total counter") == 1
        # The parent's own metrics (the audit writer's, the policy feed's) are there too.
        assert "egressguard_audit_pending" in text


def test_audit_log_receives_decisions_from_both_workers(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api") as served:
        taken = spread(served, lambda i: f"http://denied-{i}.test/")
        assert set(taken) == set(served.pids)
        assert {status for got in taken.values() for _, status in got} == {403}
    assert served.proc.returncode == 0
    with contextlib.closing(sqlite3.connect(served.home / "egressguard.db")) as db:
        hosts = {row[0] for row in db.execute(
            "SELECT host FROM audit_events WHERE verdict = 'deny' AND permitted = 0")}
    for pid, got in taken.items():
        served_hosts = {url.split("/")[2] for url, _ in got}
        assert served_hosts <= hosts, (pid, served_hosts - hosts)


def test_a_refusal_by_either_worker_is_in_the_store_before_the_client_sees_403(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api") as served, contextlib.closing(
            sqlite3.connect(served.home / "egressguard.db", timeout=30)) as db:
        refused_by: set[int] = set()
        for i in range(60):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            try:
                assert get(conn, f"http://denied-{i}.test/") == 403
                refused_by.add(owner(conn, served.port, served.pids))
            finally:
                conn.close()
            stored = db.execute("SELECT count(*) FROM audit_events WHERE host = ? AND "
                                "permitted = 0", (f"denied-{i}.test",)).fetchone()[0]
            assert stored == 1, f"refusal {i} not durable when its 403 was sent"
            if refused_by == set(served.pids) and i >= 7:
                break
        assert refused_by == set(served.pids)


def test_exfiltration_monitor_in_the_parent_counts_what_the_workers_relayed(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api", "--exfil-threshold", "1000") as served:
        sent_by: set[int] = set()
        for i in range(60):   # 100 bytes each, some through each worker: 1,000 crossed
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            try:
                conn.request("POST", f"http://127.0.0.1:{upstream.port}/{i}", body=b"x" * 100)
                conn.getresponse().read()
                sent_by.add(owner(conn, served.port, served.pids))
            finally:
                conn.close()
            if sent_by == set(served.pids) and i >= 11:
                break
        assert sent_by == set(served.pids)
    assert served.proc.returncode == 0
    with contextlib.closing(sqlite3.connect(served.home / "egressguard.db")) as db:
        warnings = db.execute("SELECT host FROM audit_events WHERE kind = 'warning' AND "
                              "layer = 'exfiltration'").fetchall()
    assert warnings == [("127.0.0.1",)]


def test_sigterm_lets_every_worker_finish_its_open_request(
        tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api", "--no-audit") as served:
        conns = {}
        for _ in range(60):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=20)
            get(conn, f"http://127.0.0.1:{upstream.port}/")
            pid = owner(conn, served.port, served.pids)
            if pid in conns:
                conn.close()
            else:
                conns[pid] = conn
            if len(conns) == 2:
                break
        assert set(conns) == set(served.pids)
        for conn in conns.values():  # /stream takes about a second to answer in full
            conn.request("GET", f"http://127.0.0.1:{upstream.port}/stream")
        time.sleep(0.2)
        served.proc.send_signal(signal.SIGTERM)
        for conn in conns.values():
            response = conn.getresponse()
            assert response.status == 200
            assert response.read().count(b"part") == 3
        assert served.proc.wait(60) == 0
        for pid in served.pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        with socket.socket() as probe, pytest.raises(OSError):
            probe.connect(("127.0.0.1", served.port))


def test_workers_fail_closed_when_the_parent_dies(tmp_path: Path, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    with serving(tmp_path, policy, "--no-api") as served:
        served.proc.kill()
        served.proc.wait(10)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(Path(f"/proc/{p}").exists()
                                             and not _zombie(p) for p in served.pids):
            time.sleep(0.05)
        assert not any(Path(f"/proc/{p}").exists() and not _zombie(p)
                       for p in served.pids)
        # Nothing accepts on the port any more (a worker that was mid-exit, or restarted
        # just before the kill, closes it within the same bound).
        while True:
            with socket.socket() as probe:
                try:
                    probe.connect(("127.0.0.1", served.port))
                except OSError:
                    break
            assert time.monotonic() < end, "the port still accepts after the parent died"
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_every_worker_joins_the_mtls_port_and_maps_client_certificates(
        tmp_path: Path, upstream: Server) -> None:
    # The identity options reach the workers: the TLS listener is one shared port, and a
    # SPIFFE ID in a client certificate is the identity a rule is scoped to, in each.
    import trustme

    from tests.gateway.test_mtls import POLICY as MTLS_POLICY
    from tests.gateway.test_mtls import client_cert, tls_status

    ca = trustme.CA()
    server = ca.issue_cert("proxy.test", "127.0.0.1")
    cert, key, cafile = tmp_path / "proxy.pem", tmp_path / "proxy.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    policy = tmp_path / "policy.yaml"
    policy.write_text(MTLS_POLICY)
    web = client_cert(ca, tmp_path, "web", uri="spiffe://prod.example/ns/shop/sa/web")
    other = client_cert(ca, tmp_path, "batch", uri="spiffe://prod.example/ns/shop/sa/batch")
    with serving(tmp_path, policy, "--no-api", "--no-audit", "--resolve", "up.test=127.0.0.1",
                 "--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
                 "--client-ca", str(cafile)) as served:
        announced = [m for line in served.lines
                     if (m := re.search(r"listening on 127\.0\.0\.1:(\d+) \(TLS proxy", line))]
        assert announced, served.lines
        tls_port = int(announced[0].group(1))

        assert [tls_status(tls_port, ca, upstream, web) for _ in range(6)] == [200] * 6
        assert tls_status(tls_port, ca, upstream, other) == 403


def _writer_policy(served: Served) -> int:
    kids = subprocess.run(["pgrep", "-P", str(served.proc.pid), "-f", "audit.remote"],
                          capture_output=True, text=True).stdout.split()
    assert len(kids) == 1, kids
    return os.sched_getscheduler(int(kids[0]))


@pytest.mark.parametrize("background", [True, False])
def test_the_audit_writer_goes_to_the_background_under_a_light_load_unless_told_not_to(
        tmp_path: Path, upstream: Server, background: bool) -> None:
    from egressguard.audit.priority import WriterPriority

    if background and not WriterPriority().enabled:
        pytest.skip("this process may not raise a SCHED_IDLE task back to normal")
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_LOOPBACK)
    flag = "--audit-writer-background" if background else "--no-audit-writer-background"
    with serving(tmp_path, policy, flag) as served:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        url = f"http://127.0.0.1:{upstream.port}/"
        seen = set()
        deadline = time.monotonic() + 8     # calm for 2 s, then in the background
        while time.monotonic() < deadline and os.SCHED_IDLE not in seen:
            assert get(conn, url) == 200
            seen.add(_writer_policy(served))
            time.sleep(0.05)
        conn.close()
    assert (os.SCHED_IDLE in seen) is background
