"""One check query for `egressguard check`, `POST /v1/check` and `simulate`: each row of a
table asked through all of them gets the same decision (or the same refusal as bad
input), UDP and ICMP flows included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from egressguard.cli.main import app as cli
from egressguard.control.api import create_app
from egressguard.engine import Kind
from egressguard.engine.query import CheckQuery, QueryError, query_of
from egressguard.policy import load_policy
from egressguard.store import Store

pytestmark = pytest.mark.timeout(120)
POLICY = """\
restrict_outbound_network_access: Enabled
allowed_fqdn_list: [my-eventhub.servicebus.windows.net]
callouts:
  - {CalloutType: sql, CalloutUriRegex: 'myserver\\.database\\.windows\\.net', CanCall: true}
application_rule_collections:
  - name: aks
    priority: 200
    rules:
      - {name: mcr, targets: [mcr.microsoft.com], protocols: ['https:443']}
network_rule_collections:
  - name: net
    priority: 100
    rules:
      - {name: resolver, destinations: [10.0.0.53/32], protocols: [UDP], ports: ['53']}
      - {name: ntp, destinations: [20.1.2.0/24], protocols: [UDP], ports: ['123'],
         sources: [10.1.0.0/24]}
      - {name: ping, destinations: [20.9.9.9/32], protocols: [ICMP]}
"""
# (query fields, verdict, rule)
ROWS: list[tuple[dict[str, Any], str, str]] = [
    ({"url": "https://mcr.microsoft.com/v2/"}, "allow", "application:aks/mcr"),
    ({"url": "https://evil.example/"}, "deny", "default"),
    ({"url": "https://myserver.database.windows.net", "type": "sql"}, "allow", "cluster[0]"),
    ({"url": "https://other.database.windows.net", "type": "sql"}, "deny", "default"),
    ({"url": "my-eventhub.servicebus.windows.net:443", "kind": "connect"}, "allow",
     "allowed_fqdn:my-eventhub.servicebus.windows.net"),
    ({"url": "mcr.microsoft.com", "kind": "connect", "port": 443}, "allow",
     "application:aks/mcr"),
    ({"url": "10.0.0.53:53", "kind": "flow", "protocol": "udp"}, "allow",
     "network:net/resolver"),
    ({"url": "10.0.0.53:53", "kind": "flow"}, "deny", "guard:private"),  # tcp unless asked
    ({"url": "20.1.2.3:123", "kind": "flow", "protocol": "udp", "source": "10.1.0.7"},
     "allow", "network:net/ntp"),
    ({"url": "20.1.2.3:123", "kind": "flow", "protocol": "udp", "source": "10.2.0.7"},
     "deny", "default"),
    ({"url": "20.9.9.9", "kind": "flow", "protocol": "icmp"}, "allow", "network:net/ping"),
    ({"url": "https://mcr.microsoft.com/v2/", "addresses": ["169.254.169.254"]}, "deny",
     "guard:link-local"),
]
# (query fields, what every front-end's refusal says)
BAD: list[tuple[dict[str, Any], str]] = [
    ({"url": "10.0.0.53:53", "kind": "flow", "protocol": "any"}, "ask once per protocol"),
    ({"url": "10.0.0.53:53", "kind": "flow", "protocol": "sctp"}, "'tcp', 'udp' or 'icmp'"),
    ({"url": "host.example", "kind": "connect"}, "connect needs host:port"),
    ({"url": "https://a.example/", "addresses": ["not-an-ip"]}, "is not an IP address"),
    ({"url": "https://a.example/", "port": 0}, "greater than or equal to 1"),
]
_OPTIONS = {"type": "--type", "kind": "--kind", "port": "--port", "protocol": "--protocol",
            "source": "--source"}


def cli_args(fields: dict[str, Any]) -> list[str]:
    args = [fields["url"]]
    for key, option in _OPTIONS.items():
        if key in fields:
            args += [option, str(fields[key])]
    for address in fields.get("addresses", []):
        args += ["--address", address]
    return args


def request_line(fields: dict[str, Any]) -> str:
    """The same query as a line of a `simulate` request list."""
    words = [fields.get("kind") or fields.get("type") or "", fields["url"]]
    if fields.get("addresses"):
        words.append("address=" + ",".join(fields["addresses"]))
    words += [f"{key}={fields[key]}" for key in ("source", "port", "protocol")
              if key in fields]
    return " ".join(w for w in words if w)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def api(policy: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[TestClient, dict[str, str]]]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}")
    store.commit("default", load_policy(policy), "op", "the table's policy")
    viewer = {"Authorization": f"Bearer {store.create_token('v', 'viewer', 't')[0]}"}
    with TestClient(create_app(store)) as client:
        yield client, viewer
    store.close()


def test_each_row_decides_the_same_through_check_the_api_and_simulate(
        policy: Path, api: tuple[TestClient, dict[str, str]], tmp_path: Path) -> None:
    client, viewer = api
    runner = CliRunner()
    lines = tmp_path / "requests.txt"
    lines.write_text("".join(request_line(fields) + "\n" for fields, _, _ in ROWS))
    simulated = runner.invoke(cli, ["simulate", "--urls", str(lines), "--current",
                                    str(policy), "--output", "json"])
    assert simulated.exit_code == 0, simulated.output
    by_cli_simulate = [r["current"] for r in json.loads(simulated.stdout)["results"]]
    by_api_simulate = [r["current"] for r in client.post(
        "/v1/simulate", headers=viewer,
        json={"requests": [request_line(f) for f, _, _ in ROWS]}).json()["results"]]
    for n, (fields, verdict, rule) in enumerate(ROWS):
        checked = runner.invoke(cli, ["check", *cli_args(fields), "--policy", str(policy),
                                      "--json"])
        assert checked.exit_code == (0 if verdict == "allow" else 1), (fields, checked.output)
        by_check = json.loads(checked.stdout)
        by_api = client.post("/v1/check", json=fields, headers=viewer)
        assert by_api.status_code == 200, (fields, by_api.text)
        assert (by_check["verdict"], by_check["rule"]) == (verdict, rule), fields
        for other in (by_api.json(), by_cli_simulate[n], by_api_simulate[n]):
            assert other == by_check, (fields, other)


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_input_is_refused_alike_by_check_the_api_and_simulate(
        policy: Path, api: tuple[TestClient, dict[str, str]], tmp_path: Path,
        fields: dict[str, Any], message: str) -> None:
    client, viewer = api
    runner = CliRunner()
    checked = runner.invoke(cli, ["check", *cli_args(fields), "--policy", str(policy)])
    assert checked.exit_code == 2 and message in checked.stderr, checked.output
    assert checked.stderr.count("\n") == 1  # one line
    by_api = client.post("/v1/check", json=fields, headers=viewer)
    assert by_api.status_code == 422 and message in by_api.text, by_api.text
    lines = tmp_path / "requests.txt"
    lines.write_text(request_line(fields) + "\n")
    simulated = runner.invoke(cli, ["simulate", "--urls", str(lines), "--current",
                                    str(policy)])
    assert simulated.exit_code == 2 and "line 1: " in simulated.stderr
    assert message in simulated.stderr, simulated.stderr


def test_query_defaults_and_the_request_it_builds() -> None:
    assert CheckQuery(url="https://a.example/").request().kind is Kind.HTTP
    callout = CheckQuery(url="https://db.example", type="SQL").request()
    assert (callout.kind, callout.callout_type) == (Kind.CALLOUT, "sql")
    dns = CheckQuery(url="a.example", kind=Kind.DNS).request()
    assert (dns.host, dns.protocol) == ("a.example", "udp")
    flow = query_of({"url": "[2001:db8::1]:53", "kind": "FLOW", "protocol": "UDP"}).request()
    assert (flow.host, flow.port, flow.protocol) == ("2001:db8::1", 53, "udp")
    with pytest.raises(QueryError, match=r"^--kind: "):
        query_of({"url": "x", "kind": "carrier-pigeon"}, {"kind": "--kind"})
    with pytest.raises(QueryError, match="port 70000 must be 1-65535"):
        query_of({"url": "a.example:70000", "kind": "connect"})
    with pytest.raises(QueryError, match="a callout needs its type"):
        query_of({"url": "https://db.example", "kind": "callout"})
    with pytest.raises(QueryError, match="colour: Extra inputs are not permitted"):
        query_of({"url": "https://a.example/", "colour": "blue"})
