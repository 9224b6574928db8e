"""`egressguard firewall apply --watch` in a real kernel: two network namespaces joined by
a veth pair, the watcher following a policy file or a store cluster, and a DNS server on
loopback answering for the FQDN a network rule names (short TTL, so the test sees the
address set refreshed before expiry and emptied after the name moves).

Only namespaces this module creates are touched (never the host's rules).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from egressguard.policy import load_policy_text
from egressguard.store import Store

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces "
                                                 "and load nftables rules"),
    pytest.mark.skipif(not (shutil.which("nft") or Path("/usr/sbin/nft").exists()),
                       reason="nft missing (Debian package nftables)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="ip missing (iproute2)"),
]

# Public (non-special) addresses, so a name resolving to them is not refused by the
# address guard; they exist only inside the namespaces below.
CLIENT_IP, SERVER_IP, ELSEWHERE_IP = "11.231.0.1", "11.231.0.2", "11.231.0.3"
TCP_PORT, NTP_PORT = 18443, 123
NAME, TTL = "ntp.lab.test", 2
TABLE = f"egw{os.getpid() % 100000}"

SERVER = textwrap.dedent(f"""
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{SERVER_IP}", {TCP_PORT})); s.listen(64)
    def accept():
        while True:
            c, _ = s.accept(); c.sendall(b"hello"); c.close()
    threading.Thread(target=accept, daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("{SERVER_IP}", {NTP_PORT}))
    def echo():
        while True:
            data, peer = u.recvfrom(2048); u.sendto(data, peer)
    threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")

# Tries a fresh flow every few ms until one gets through; prints when (wall clock).
UNTIL_OPEN = textwrap.dedent(f"""
    import socket, sys, time
    proto, port, deadline = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
    print("started", flush=True)
    while time.time() < deadline:
        try:
            if proto == "tcp":
                with socket.create_connection(("{SERVER_IP}", port), timeout=0.05) as s:
                    s.settimeout(1.0)
                    if s.recv(5) == b"hello":
                        print(f"open {{time.time():.6f}}", flush=True); sys.exit(0)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(0.05); s.sendto(b"ping", ("{SERVER_IP}", port))
                    if s.recv(16) == b"ping":
                        print(f"open {{time.time():.6f}}", flush=True); sys.exit(0)
        except OSError:  # timeout, or EPERM: the output hook dropped it
            time.sleep(0.01)
    print("never", flush=True)
""")

CLOSED = "restrict_outbound_network_access: true\n"
TCP_OPEN = textwrap.dedent(f"""
    restrict_outbound_network_access: true
    network_rule_collections:
      - name: lab
        priority: 100
        rules:
          - {{name: web, destinations: [{SERVER_IP}/32], protocols: [tcp], ports: [{TCP_PORT}]}}
""")
NTP_BY_NAME = textwrap.dedent(f"""
    restrict_outbound_network_access: true
    network_rule_collections:
      - name: time
        priority: 100
        rules:
          - {{name: ntp, destinations: [{NAME}], protocols: [udp], ports: [{NTP_PORT}]}}
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers A for NAME with a short TTL; `address` can be changed while running."""

    def __init__(self) -> None:
        self.address = SERVER_IP
        self.asked = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        if str(request.q.qname).rstrip(".").lower() == NAME:
            self.asked += 1
            if request.q.qtype == QTYPE.A:
                reply.add_answer(*RR.fromZone(f"{NAME}. {TTL} IN A {self.address}"))
        return reply


@dataclass
class Lab:
    client: str
    server: str
    home: Path
    zone: Zone
    dns_port: int
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    lines: dict[int, queue.Queue[str | None]] = field(default_factory=dict)

    def until_open(self, proto: str, port: int, within: float = 5.0
                   ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.client, sys.executable, "-c",
                                 UNTIL_OPEN, proto, str(port), str(within)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        return proc

    def opened_at(self, proc: subprocess.Popen[str]) -> float | None:
        out, _ = proc.communicate(timeout=30)
        word, _, when = out.strip().partition(" ")
        return float(when) if word == "open" else None

    def is_open(self, proto: str, port: int) -> bool:
        return self.opened_at(self.until_open(proto, port, within=0.5)) is not None

    def watch(self, *source: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "egressguard.cli.main", "firewall", "apply", "--watch",
             "--netns", self.client, "--table", TABLE, "--resolver",
             f"127.0.0.1:{self.dns_port}", *source],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "EGRESSGUARD_HOME": str(self.home), "PYTHONUNBUFFERED": "1"})
        self.procs.append(proc)
        lines: queue.Queue[str | None] = queue.Queue()
        self.lines[proc.pid] = lines

        def read() -> None:  # a thread, so no line waits in a buffer select cannot see
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.wait_for(proc, "applied")
        return proc

    def wait_for(self, proc: subprocess.Popen[str], word: str, timeout: float = 30) -> str:
        """The next stderr line containing `word` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines[proc.pid].get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if word in line:
                return line
            seen.append(line)
        proc.kill()
        pytest.fail(f"no {word!r} from the watcher: {seen}")

    def stop(self, proc: subprocess.Popen[str]) -> str:
        """Stop the watcher; the stderr lines not yet read."""
        proc.terminate()
        proc.wait(timeout=20)
        rest: list[str] = []
        while (line := self.lines[proc.pid].get(timeout=10)) is not None:
            rest.append(line)
        return "".join(rest)

    def nft(self, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.client, "nft", *args],
                              capture_output=True, text=True, timeout=10).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:4]}"
    client, server = f"egw-c-{tag}", f"egw-s-{tag}"
    created: list[str] = []
    listener: subprocess.Popen[str] | None = None
    zone = Zone()
    dns = DNSServer(zone, address="127.0.0.1", port=0,
                    logger=DNSLogger(log="-recv,-send,-request,-reply,-truncated,-data"))
    threading.Thread(target=dns.server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    lab = Lab(client, server, tmp_path_factory.mktemp("fw-watch"), zone,
              dns.server.server_address[1])
    try:
        for name in (client, server):
            _ip("netns", "add", name)
            created.append(name)
        _ip("-n", client, "link", "add", "egw0", "type", "veth", "peer", "name", "egw1",
            "netns", server)
        for name, dev, address in ((client, "egw0", CLIENT_IP), (server, "egw1", SERVER_IP)):
            _ip("-n", name, "addr", "add", f"{address}/29", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        listener = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c",
                                     SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield lab
    finally:
        for proc in lab.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        dns.server.shutdown()
        dns.server.server_close()
        for name in created:  # deleting a namespace deletes its veth end and its rules
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _write(path: Path, text: str) -> None:
    """Replace the file in one rename, as editors and config managers do."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


def test_cluster_change_opens_a_dropped_flow_within_one_second(lab: Lab, store_url: str
                                                               ) -> None:
    with Store(store_url) as store:
        store.commit("default", load_policy_text(CLOSED, "closed"), "test", "close")
        watcher = lab.watch("--cluster", "default", "--store", store_url)
        assert not lab.is_open("tcp", TCP_PORT)
        prober = lab.until_open("tcp", TCP_PORT)
        version = store.commit("default", load_policy_text(TCP_OPEN, "open"), "test", "open")
    opened = lab.opened_at(prober)
    assert opened is not None, "the flow never passed"
    elapsed = opened - version.created_at.timestamp()
    print(f"\ncluster commit -> flow passes in the kernel ({store_url.split(':')[0]}): "
          f"{elapsed * 1e3:.0f} ms")
    assert elapsed < 1.0
    err = lab.stop(watcher)
    assert f"version {version.number}" in err and "Traceback" not in err


def test_file_change_opens_fqdn_rule_within_1s_by_dns_learned_set_bounded_by_ttl(
        lab: Lab) -> None:
    lab.zone.address = SERVER_IP
    policy = lab.home / "ntp.yaml"
    _write(policy, CLOSED)
    watcher = lab.watch("--policy", str(policy))
    assert not lab.is_open("udp", NTP_PORT)
    prober = lab.until_open("udp", NTP_PORT)
    changed = time.time()
    _write(policy, NTP_BY_NAME)
    opened = lab.opened_at(prober)
    assert opened is not None, "the flow never passed"
    print(f"\nfile change -> flow by name passes in the kernel: "
          f"{(opened - changed) * 1e3:.0f} ms")
    assert opened - changed < 1.0
    assert "1 DNS-learned names" in lab.wait_for(watcher, "firewall: applied")
    listed = lab.nft("list", "set", "inet", TABLE, "fqdn_0_v4")
    timeout = re.search(rf"{re.escape(SERVER_IP)} timeout (\d+)s", listed)
    assert timeout and 1 <= int(timeout.group(1)) <= TTL, listed  # no longer than the TTL
    time.sleep(TTL * 2 + 0.5)  # the first answer has expired: only a refresh keeps it
    assert lab.is_open("udp", NTP_PORT)
    asked = lab.zone.asked
    assert asked >= 3  # looked up again before each expiry
    _write(policy, NTP_BY_NAME + TCP_OPEN.split("rules:", 1)[1].replace("- {name: web",
                                                                          "- {name: more"))
    lab.wait_for(watcher, "firewall: applied")  # a re-apply replaces the whole table...
    assert SERVER_IP in lab.nft("list", "set", "inet", TABLE, "fqdn_0_v4")  # ...not the names
    assert lab.is_open("udp", NTP_PORT) and lab.is_open("tcp", TCP_PORT)
    lab.zone.address = ELSEWHERE_IP  # the name moves: the old address lapses with its TTL
    time.sleep(TTL + 1.5)
    assert not lab.is_open("udp", NTP_PORT)
    assert ELSEWHERE_IP in lab.nft("list", "set", "inet", TABLE, "fqdn_0_v4")
    err = lab.stop(watcher)
    assert "firewall: applied" not in err and "Traceback" not in err  # refreshes are quiet


NTP_DENY_THEN_CIDR = textwrap.dedent(f"""
    restrict_outbound_network_access: true
    network_rule_collections:
      - name: time
        priority: 100
        rules:
          - {{name: not-by-name, action: deny, destinations: [{NAME}], protocols: [udp],
             ports: [{NTP_PORT}]}}
          - {{name: by-address, destinations: [{SERVER_IP}/32], protocols: [udp],
             ports: [{NTP_PORT}]}}
""")


def test_an_earlier_fqdn_deny_drops_in_the_kernel_as_the_engine_decides(lab: Lab) -> None:
    """Rule order binds names and addresses together (issue 15, item 5): the name's deny
    comes first, so its learned address is dropped though a later rule allows it, and the
    engine (what `check` and the gateway say) decides the same."""
    import ipaddress

    from egressguard.engine import Kind, Request, compile_policy

    lab.zone.address = SERVER_IP
    policy = lab.home / "order.yaml"
    _write(policy, NTP_DENY_THEN_CIDR)
    watcher = lab.watch("--policy", str(policy))
    deadline = time.monotonic() + 10
    while SERVER_IP not in lab.nft("list", "set", "inet", TABLE, "fqdn_0_v4"):
        assert time.monotonic() < deadline, "the name's address was never learned"
        time.sleep(0.1)
    assert not lab.is_open("udp", NTP_PORT)  # the address is learned, and still dropped
    engine = compile_policy(load_policy_text(NTP_DENY_THEN_CIDR)).decide(Request(
        kind=Kind.FLOW, host=NAME, port=NTP_PORT, protocol="udp",
        addresses=(ipaddress.ip_address(SERVER_IP),)))
    assert not engine.permitted and engine.rule == "network:time/not-by-name"
    # An earlier allow by name wins over a later deny by address, in both as well.
    allow_then_deny = NTP_DENY_THEN_CIDR.replace("not-by-name, action: deny,", "by-name,") \
        .replace("{name: by-address,", "{name: by-address, action: deny,")
    _write(policy, allow_then_deny)
    lab.wait_for(watcher, "firewall: applied")
    assert lab.is_open("udp", NTP_PORT)
    engine = compile_policy(load_policy_text(allow_then_deny)).decide(Request(
        kind=Kind.FLOW, host=NAME, port=NTP_PORT, protocol="udp",
        addresses=(ipaddress.ip_address(SERVER_IP),)))
    assert engine.permitted and engine.rule == "network:time/by-name"
    err = lab.stop(watcher)
    assert "Traceback" not in err
