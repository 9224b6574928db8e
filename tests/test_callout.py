"""The library check (`egressguard.callout`): Data Explorer's callout policy in-process, and
the httpx hook against a real local HTTP server."""

from __future__ import annotations

import http.server
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from egressguard.audit.events import DecisionEvent
from egressguard.callout import CalloutDenied, Guard
from egressguard.policy import PolicyError, load_policy_text

pytestmark = pytest.mark.timeout(30)

RESTRICTED = textwrap.dedent("""\
    restrict_outbound_network_access: true
    allowed_fqdn_list: [adedicated.sql.azuresynapse.net]
    callouts:
      - {callout_type: sql, uri_regex: 'myserver\\.database\\.windows\\.net', can_call: true}
      - callout_type: webapi
        uri_regex: '^http://127\\.0\\.0\\.1:\\d+/(allowed|hop)'
        can_call: true
      - {callout_type: '*', uri_regex: 'forbidden', can_call: false}
    network_rule_collections:
      - name: local
        priority: 100
        rules:
          - {name: loopback, destinations: [127.0.0.1/32], protocols: [TCP], ports: ['1-65535']}
    """)


class ListSink:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def emit(self, event: DecisionEvent) -> None:
        self.events.append(event)


@pytest.fixture
def guard() -> Guard:
    return Guard(load_policy_text(RESTRICTED, "test.yaml"), sink=ListSink())


def test_default_policy_allows_the_immutable_callouts() -> None:
    guard = Guard()
    assert guard.require("sql", "https://myserver.database.windows.net").layer == "immutable"
    assert guard.check("external_data", "https://anything.example/blob").allowed


def test_restricted_policy_drops_the_immutable_layer(guard: Guard) -> None:
    with pytest.raises(CalloutDenied):
        guard.require("kusto", "https://help.kusto.windows.net")


def test_denied_callout_uses_data_explorers_wording(guard: Guard) -> None:
    with pytest.raises(CalloutDenied) as info:
        guard.require("webapi", "https://attacker.example/collect?d=secret")
    assert str(info.value).startswith(
        "Callout to 'https://attacker.example/collect' is not allowed by the callout policy")
    assert info.value.code == "SEM0056"
    assert info.value.callout_type == "webapi"
    assert info.value.decision.layer == "default"


def test_cluster_entry_allows_and_type_compares_case_insensitively(guard: Guard) -> None:
    decision = guard.require("SQL", "https://myserver.database.windows.net")
    assert (decision.layer, decision.rule) == ("cluster", "cluster[0]")


def test_can_call_false_wins_over_an_allowing_entry(guard: Guard) -> None:
    with pytest.raises(CalloutDenied, match="forbids"):
        guard.require("sql", "https://myserver.database.windows.net/forbidden")


def test_allowed_fqdn_list_covers_every_type_but_webapi(guard: Guard) -> None:
    assert guard.check("sql", "https://adedicated.sql.azuresynapse.net").allowed
    assert not guard.check("webapi", "https://adedicated.sql.azuresynapse.net").allowed


def test_query_and_userinfo_cannot_smuggle_an_allowed_host(guard: Guard) -> None:
    for uri in ("https://evil.example/?x=myserver.database.windows.net",
                "https://myserver.database.windows.net@evil.example/"):
        assert not guard.check("sql", uri).allowed, uri


def test_metadata_address_is_refused_even_when_an_entry_matches() -> None:
    guard = Guard(load_policy_text(
        "callouts: [{callout_type: webapi, uri_regex: '.*', can_call: true}]\n", "t"))
    decision = guard.check("webapi", "http://169.254.169.254/latest/meta-data/")
    assert (decision.allowed, decision.layer) == (False, "guard")
    decision = guard.check("webapi", "https://metadata.example/", addresses=["169.254.169.254"])
    assert (decision.allowed, decision.layer) == (False, "guard")


def test_unparseable_uri_is_a_denial_not_a_crash(guard: Guard) -> None:
    decision = guard.check("webapi", "http://[::1")
    assert not decision.allowed and decision.layer == "guard"


def test_report_only_permits_and_records_the_would_be_denial() -> None:
    sink = ListSink()
    guard = Guard(load_policy_text(RESTRICTED, "t"), sink=sink, report_only=True)
    decision = guard.require("webapi", "https://attacker.example/")
    assert not decision.allowed
    [event] = sink.events
    assert (event.kind, event.verdict, event.permitted) == ("callout", "deny", True)
    assert event.callout_type == "webapi" and event.host == "attacker.example"


@pytest.mark.parametrize("switch", ["policy", "option"])
def test_report_only_from_the_policy_or_the_guard_lets_a_denied_callout_through_recorded(
        switch: str) -> None:
    # The checkpoint's one definition: either switch records the would-be denial and
    # permits; neither switch on refuses.
    text = ("report_only: true\n" if switch == "policy" else "") + RESTRICTED
    sink = ListSink()
    guard = Guard(load_policy_text(text, "t"), sink=sink, report_only=switch == "option")
    decision = guard.require("webapi", "https://attacker.example/")
    assert decision.verdict == "deny" and guard.permitted(decision)
    [event] = sink.events
    assert (event.kind, event.verdict, event.permitted, event.layer) == (
        "callout", "deny", True, decision.layer)
    enforcing = Guard(load_policy_text(RESTRICTED, "t"), sink=ListSink())
    with pytest.raises(CalloutDenied):
        enforcing.require("webapi", "https://attacker.example/")


def test_every_check_is_emitted(guard: Guard) -> None:
    guard.check("sql", "https://myserver.database.windows.net")
    guard.check("webapi", "https://attacker.example/")
    allowed, denied = guard.sink.events  # type: ignore[attr-defined]
    assert (allowed.verdict, allowed.permitted, allowed.rule) == ("allow", True, "cluster[0]")
    assert (denied.verdict, denied.permitted) == ("deny", False)
    assert denied.path == "https://attacker.example/"


# -- hot reload --------------------------------------------------------------------------

def test_policy_file_edits_apply_and_bad_edits_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(RESTRICTED)
    with Guard.from_file(path, interval=0.05) as guard:
        assert not guard.check("webapi", "https://partner.example/").allowed
        path.write_text(RESTRICTED.replace(
            "callouts:\n", "callouts:\n  - {callout_type: webapi, uri_regex: 'partner\\.example', "
            "can_call: true}\n"))
        _eventually(lambda: guard.check("webapi", "https://partner.example/").allowed)
        version = guard.holder.active.version
        path.write_text("callouts: [{callout_type: sql, uri_regex: '(a'}]\n")
        time.sleep(0.3)
        assert guard.holder.active.version == version
        assert guard.check("webapi", "https://partner.example/").allowed


def test_invalid_policy_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("callouts: [{callout_type: sql, uri_regex: '(a'}]\n")
    with pytest.raises(PolicyError, match="invalid regular expression"):
        Guard.from_file(path, watch=False)


def _eventually(condition: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- httpx hook against a real server ---------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/forbidden")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_httpx_hook_lets_allowed_requests_through(guard: Guard, server: str) -> None:
    with httpx.Client(event_hooks={"request": [guard.httpx_hook("webapi")]}) as client:
        assert client.get(f"{server}/allowed").text == "ok"
    assert _Handler.hits == ["/allowed"]


def test_httpx_hook_stops_a_denied_request_before_it_is_sent(guard: Guard,
                                                             server: str) -> None:
    with httpx.Client(event_hooks={"request": [guard.httpx_hook("webapi")]}) as client, \
            pytest.raises(CalloutDenied, match="is not allowed by the callout policy"):
        client.get(f"{server}/secret-export")
    assert _Handler.hits == []


def test_redirect_to_a_denied_uri_is_stopped_at_the_hop(guard: Guard, server: str) -> None:
    with httpx.Client(event_hooks={"request": [guard.httpx_hook("webapi")]},
                      follow_redirects=True) as client, pytest.raises(CalloutDenied):
        client.get(f"{server}/hop")
    assert _Handler.hits == ["/hop"]


async def test_async_httpx_hook(guard: Guard, server: str) -> None:
    hooks = {"request": [guard.async_httpx_hook("webapi")]}
    async with httpx.AsyncClient(event_hooks=hooks) as client:
        assert (await client.get(f"{server}/allowed")).status_code == 200
        with pytest.raises(CalloutDenied):
            await client.get(f"{server}/nope")
    assert _Handler.hits == ["/allowed"]
