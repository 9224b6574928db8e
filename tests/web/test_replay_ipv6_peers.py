"""Replay on the dashboard groups what would flip by client: IPv6 peers, which the
gateway records as `address:port` without brackets, are one client per address, not one
per connection (nor a different address when the port happens to be a valid last group)."""

from __future__ import annotations

import pytest

from tests.web.conftest import Env, event
from tests.web.test_replay import flips

pytestmark = pytest.mark.timeout(60)


def test_an_ipv6_peers_connections_are_replayed_as_one_client(env: Env) -> None:
    # As the gateway writes its peer (f"{host}:{port}"): ports 8080 and 443 make
    # `2001:db8::7:8080` a valid IPv6 address on its own; 51234 does not.
    for port in (8080, 443, 51234):
        env.log.emit(event(host="v6.evil.net", verdict="deny", permitted=False,
                           layer="default", rule="default:deny",
                           client_address=f"2001:db8::7:{port}"))
    env.log.emit(event(host="v6.evil.net", verdict="deny", permitted=False,
                       layer="default", rule="default:deny",
                       client_address="[2001:db8::7]:40000"))
    env.log.flush()
    wider = ('restrict_outbound_network_access: true\n'
             'allowed_fqdn_list: ["*.evil.net"]\n')
    got = env.client.post("/dashboard/replay", data={"policy_text": wider, "since": "1h"},
                          headers=env.headers("auditor"))
    assert got.status_code == 200, got.text
    rows = [row for row in flips(got.text, "newly-allowed") if row[3] == "v6.evil.net:443"]
    assert rows == [["4", "2001:db8::7", "connect", "v6.evil.net:443"]], rows
