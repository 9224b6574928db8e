"""The rendered ruleset in a real kernel: two network namespaces joined by a veth pair,
listeners in `server`, the ruleset applied in `client` with `egressguard firewall apply`.

Only namespaces this module creates are touched (never the host's rules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces "
                                                 "and load nftables rules"),
    pytest.mark.skipif(not (shutil.which("nft") or Path("/usr/sbin/nft").exists()),
                       reason="nft missing (Debian package nftables)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="ip missing (iproute2)"),
]

CLIENT_IP, SERVER_IP = "10.231.0.1", "10.231.0.2"
TCP_A, TCP_B, UDP_PORT = 18080, 18081, 19090

SERVER = textwrap.dedent(f"""
    import socket, sys, threading
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{SERVER_IP}", port)); s.listen(64)
        def loop():
            while True:
                c, _ = s.accept(); c.sendall(b"hello"); c.close()
        threading.Thread(target=loop, daemon=True).start()
    tcp({TCP_A}); tcp({TCP_B})
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("{SERVER_IP}", {UDP_PORT}))
    def echo():
        while True:
            data, peer = u.recvfrom(2048); u.sendto(data, peer)
    threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")

PROBE = textwrap.dedent(f"""
    import json, socket, sys, threading
    results = {{}}
    def probe(proto, port):
        key = f"{{proto}}/{{port}}"
        try:
            if proto == "tcp":
                with socket.create_connection(("{SERVER_IP}", port), timeout=1.0) as s:
                    results[key] = "open" if s.recv(5) == b"hello" else "bad"
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(1.0); s.sendto(b"ping", ("{SERVER_IP}", port))
                    results[key] = "open" if s.recv(16) == b"ping" else "bad"
        except socket.timeout:
            results[key] = "dropped"
        except PermissionError:  # the output hook dropped a datagram as it was sent
            results[key] = "dropped"
        except OSError as exc:
            results[key] = f"error: {{exc}}"
    threads = [threading.Thread(target=probe, args=(p, int(n)))
               for p, n in (a.split("/") for a in sys.argv[1:])]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps(results))
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lab:
    client: str
    server: str
    home: Path

    def probe(self, *targets: str) -> dict[str, str]:
        done = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c",
                               PROBE, *targets], capture_output=True, text=True,
                              timeout=20, check=True)
        result: dict[str, str] = json.loads(done.stdout)
        return result

    def egressguard(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EGRESSGUARD_HOME": str(self.home)}
        return subprocess.run([sys.executable, "-m", "egressguard.cli.main", "firewall",
                               *args], capture_output=True, text=True, timeout=60, env=env)

    def apply(self, policy_yaml: str) -> subprocess.CompletedProcess[str]:
        path = self.home / f"policy-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(textwrap.dedent(policy_yaml))
        done = self.egressguard("apply", "--netns", self.client, "--policy", str(path))
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    client, server = f"egfw-c-{tag}", f"egfw-s-{tag}"
    listener: subprocess.Popen[str] | None = None
    created: list[str] = []
    try:
        for name in (client, server):
            _ip("netns", "add", name)
            created.append(name)
        _ip("-n", client, "link", "add", "egc0", "type", "veth", "peer", "name", "egs0",
            "netns", server)
        for name, dev, address in ((client, "egc0", CLIENT_IP), (server, "egs0", SERVER_IP)):
            _ip("-n", name, "addr", "add", f"{address}/30", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        listener = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c",
                                     SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield Lab(client, server, tmp_path_factory.mktemp("fw-home"))
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        for name in created:  # deleting a namespace deletes its veth end and its rules
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


ONLY_TCP_A = f"""
    restrict_outbound_network_access: true
    network_rule_collections:
      - name: lab
        priority: 100
        rules:
          - {{name: web, destinations: [{SERVER_IP}/32], protocols: [tcp], ports: [{TCP_A}]}}
"""


def test_without_the_ruleset_every_lab_port_answers(lab: Lab) -> None:
    lab.egressguard("remove", "--netns", lab.client)
    assert lab.probe(f"tcp/{TCP_A}", f"tcp/{TCP_B}", f"udp/{UDP_PORT}") == {
        f"tcp/{TCP_A}": "open", f"tcp/{TCP_B}": "open", f"udp/{UDP_PORT}": "open"}


def test_flow_to_unlisted_port_is_dropped_in_the_kernel(lab: Lab) -> None:
    lab.apply(ONLY_TCP_A)
    assert lab.probe(f"tcp/{TCP_A}", f"tcp/{TCP_B}", f"udp/{UDP_PORT}") == {
        f"tcp/{TCP_A}": "open", f"tcp/{TCP_B}": "dropped", f"udp/{UDP_PORT}": "dropped"}


def test_policy_change_takes_effect_on_reapply(lab: Lab) -> None:
    lab.apply(ONLY_TCP_A)
    lab.apply(f"""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: lab
            priority: 100
            rules:
              - {{name: b, destinations: [{SERVER_IP}/32], protocols: [tcp], ports: [{TCP_B}]}}
              - {{name: echo, destinations: [10.231.0.0/30], protocols: [udp],
                  ports: [{UDP_PORT}]}}
    """)
    assert lab.probe(f"tcp/{TCP_A}", f"tcp/{TCP_B}", f"udp/{UDP_PORT}") == {
        f"tcp/{TCP_A}": "dropped", f"tcp/{TCP_B}": "open", f"udp/{UDP_PORT}": "open"}


def test_private_address_is_dropped_by_the_guard_even_when_unrestricted(lab: Lab) -> None:
    lab.apply("restrict_outbound_network_access: false\n")
    assert lab.probe(f"tcp/{TCP_A}", f"udp/{UDP_PORT}") == {
        f"tcp/{TCP_A}": "dropped", f"udp/{UDP_PORT}": "dropped"}


def test_deny_rule_drops_in_unrestricted_mode_before_a_later_allow(lab: Lab) -> None:
    lab.apply(f"""
        restrict_outbound_network_access: false
        network_rule_collections:
          - name: first
            priority: 100
            action: deny
            rules:
              - {{name: no-a, destinations: ["*"], protocols: [tcp], ports: [{TCP_A}]}}
          - name: lab
            priority: 200
            rules:
              - {{name: lan, destinations: [10.231.0.0/30]}}
    """)
    assert lab.probe(f"tcp/{TCP_A}", f"tcp/{TCP_B}", f"udp/{UDP_PORT}") == {
        f"tcp/{TCP_A}": "dropped", f"tcp/{TCP_B}": "open", f"udp/{UDP_PORT}": "open"}


def test_apply_is_idempotent_and_status_shows_the_rule_counters(lab: Lab) -> None:
    lab.apply(ONLY_TCP_A)
    lab.apply(ONLY_TCP_A)
    assert lab.probe(f"tcp/{TCP_A}")[f"tcp/{TCP_A}"] == "open"
    shown = lab.egressguard("status", "--netns", lab.client)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("table inet egressguard") == 1
    assert 'comment "network:lab/web"' in shown.stdout
    assert "policy drop" in shown.stdout


def test_status_without_a_table_exits_1_and_remove_is_harmless(lab: Lab) -> None:
    lab.egressguard("remove", "--netns", lab.client)
    assert lab.egressguard("remove", "--netns", lab.client).returncode == 0
    shown = lab.egressguard("status", "--netns", lab.client)
    assert shown.returncode == 1
    assert "not enforced" in shown.stderr


def test_a_rejected_ruleset_leaves_the_previous_one_in_force(lab: Lab) -> None:
    from egressguard.firewall.nft import FirewallError, apply

    lab.apply(ONLY_TCP_A)
    broken = ("table inet egressguard\ndelete table inet egressguard\n"
              "table inet egressguard { chain output { type filter hook output priority "
              "filter; policy accept; no-such-statement } }\n")
    with pytest.raises(FirewallError, match="refused the ruleset"):
        apply(broken, lab.client)
    missing = lab.egressguard("apply", "--netns", lab.client,
                              "--policy", str(lab.home / "missing.yaml"))
    assert missing.returncode == 2 and "error:" in missing.stderr
    assert lab.probe(f"tcp/{TCP_A}", f"tcp/{TCP_B}") == {
        f"tcp/{TCP_A}": "open", f"tcp/{TCP_B}": "dropped"}


def test_apply_as_an_unprivileged_user_is_refused_clearly() -> None:
    from egressguard.firewall.nft import FirewallError, apply

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody, then tries to load a ruleset
        message = "applied"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            apply("table inet egressguard\n")
        except FirewallError as exc:
            message = str(exc)
        except BaseException as exc:
            message = f"unexpected: {exc!r}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert "needs root" in message


def test_the_kernel_accepts_the_ruleset_of_every_random_policy(lab: Lab) -> None:
    import random

    from egressguard.engine import References
    from egressguard.firewall import Options, build_ruleset, render
    from tests.firewall.test_agreement import TAGS, _policy

    rnd = random.Random(7)
    text = "".join(render(build_ruleset(_policy(rnd), References(service_tags=TAGS),
                                        Options(table=f"egcheck{i}", set_threshold=2)))
                   for i in range(40))
    nft = shutil.which("nft") or "/usr/sbin/nft"
    done = subprocess.run(["ip", "netns", "exec", lab.client, nft, "-c", "-f", "-"],
                          input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
