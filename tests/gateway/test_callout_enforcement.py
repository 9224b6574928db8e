"""`callout_enforcement: gateway` (issue 15, item 4): the gateway applies the callout layers
to the connections it proxies, each callout type by its protocol family (sql TDS 1433,
postgresql 5432, mysql 3306, the HTTPS types 443), through a running gateway."""

from __future__ import annotations

import socket

import pytest

from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import load_policy_text

pytestmark = pytest.mark.timeout(30)
POLICY = r"""
restrict_outbound_network_access: true
callout_enforcement: gateway
trusted_ranges: [127.0.0.0/8]
callouts:
  - {callout_type: sql, uri_regex: 'myserver\.database\.windows\.net/?$', can_call: true}
  - {callout_type: postgresql, uri_regex: 'pg\.example\.org', can_call: true}
  - {callout_type: kusto, uri_regex: 'help\.kusto\.windows\.net', can_call: true}
  - {callout_type: webapi, uri_regex: 'api\.example\.org', can_call: true}
  - {callout_type: webapi, uri_regex: 'api\.example\.org/?$', can_call: false}
"""
HOSTS = ("myserver.database.windows.net", "other.database.windows.net", "pg.example.org",
         "help.kusto.windows.net", "api.example.org", "attacker.example")


def _connect(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


def _refused(gw, target: str) -> bool:
    return _connect(gw.gateway.addresses[0][1], target).startswith(b"HTTP/1.1 403")


def test_gateway_applies_the_callout_layers_by_protocol_family(gateway_factory) -> None:
    gw = gateway_factory(POLICY, resolve=dict.fromkeys(HOSTS, "127.0.0.1"))
    assert not _refused(gw, "myserver.database.windows.net:1433")  # TDS: a sql callout
    event = gw.sink.wait_for(lambda e: e.host == "myserver.database.windows.net")
    assert (event.verdict, event.layer, event.rule) == ("allow", "cluster", "cluster[0]")
    assert _refused(gw, "myserver.database.windows.net:443")  # HTTPS is no sql callout
    assert _refused(gw, "other.database.windows.net:1433")
    assert not _refused(gw, "pg.example.org:5432")
    assert _refused(gw, "pg.example.org:3306")  # mysql: no entry
    assert not _refused(gw, "help.kusto.windows.net:443")
    # A refusing entry of any HTTPS type wins: the gateway cannot tell which one is meant.
    assert _refused(gw, "api.example.org:443")
    denied = gw.sink.wait_for(lambda e: e.host == "api.example.org")
    assert denied.layer == "cluster" and "SEM0056" in denied.reason
    assert _refused(gw, "attacker.example:443")


def test_library_enforcement_leaves_proxied_connections_to_the_rules(gateway_factory) -> None:
    gw = gateway_factory(POLICY.replace("callout_enforcement: gateway\n", ""),
                         resolve=dict.fromkeys(HOSTS, "127.0.0.1"))
    assert _refused(gw, "myserver.database.windows.net:1433")
    assert _refused(gw, "help.kusto.windows.net:443")


def test_one_rule_set_one_intent_an_unrestricted_cluster_refuses_what_callouts_forbid() -> None:
    text = """
        restrict_outbound_network_access: false
        callout_enforcement: gateway
        callouts: [{callout_type: webapi, uri_regex: attacker, can_call: false}]
        application_rule_collections:
          - name: deny
            priority: 100
            action: deny
            rules: [{name: mirror, targets: [mirror.example.com]}]
    """
    snap = compile_policy(load_policy_text(text))
    ask = lambda host, port: snap.decide(Request(kind=Kind.CONNECT, host=host, port=port))  # noqa: E731
    assert not ask("attacker.example", 443).allowed
    assert ask("attacker.example", 80).allowed  # port 80 carries no callout type
    assert ask("elsewhere.example", 443).allowed  # the immutable layer: external_data .*
    # A rule's denial stands, whatever a callout entry allows.
    assert ask("mirror.example.com", 443).rule == "application:deny/mirror"
    library = compile_policy(load_policy_text(text.replace(
        "callout_enforcement: gateway", "")))
    assert library.decide(Request(kind=Kind.CONNECT, host="attacker.example",
                                  port=443)).allowed


@pytest.mark.parametrize("fmt", ["squid", "azure-firewall", "cilium", "kubernetes"])
def test_exports_refuse_what_they_could_only_widen(tmp_path, fmt: str) -> None:
    from typer.testing import CliRunner

    from egressguard.cli.main import app

    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    result = CliRunner().invoke(app, ["export", "--format", fmt, "--policy", str(path)])
    assert result.exit_code == 2 and "callout_enforcement: gateway" in result.output
    path.write_text(POLICY.replace("callout_enforcement: gateway\n", ""))
    result = CliRunner().invoke(app, ["export", "--format", fmt, "--policy", str(path)])
    assert result.exit_code == 0, result.output
