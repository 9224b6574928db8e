"""`egressguard test`, `ceiling set|show|clear|check`, refusals of CLI writes (exit 1 with
the failing assertion or a `counterexample:` line that `egressguard check` confirms) and
`versions diff A B --reach --fail-on-new-reach`, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.analysis.contain import check_arguments
from egressguard.cli.main import app

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
CEILING = """\
restrict_outbound_network_access: true
allowed_fqdn_list: ["*.github.com", pypi.org]
network_rule_collections:
- name: vpn
  rules:
  - {name: wg, destinations: [20.50.0.0/16], protocols: [udp], ports: ["51820"]}
"""
WITH_ASSERTIONS = """\
restrict_outbound_network_access: true
allowed_fqdn_list: [pypi.org]
assertions:
- {request: "https://pypi.org/simple/", expect: allow, name: pypi-works}
- {request: "https://evil.example/", expect: deny, name: no-evil}
- {request: "flow 20.50.1.1:51820/udp", expect: deny, name: no-vpn}
"""


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_test_passes_fails_naming_the_assertion_and_refuses_bad_files(tmp_path: Path
                                                                     ) -> None:
    good = _file(tmp_path, "good.yaml", WITH_ASSERTIONS)
    code, out = _run("test", "-f", good)
    assert code == 0, out
    assert "pypi-works" in out and "3 passed, 0 failed" in out
    broken = _file(tmp_path, "broken.yaml", WITH_ASSERTIONS.replace(
        "[pypi.org]", "[pypi.org, evil.example]"))
    code, out = _run("test", "-f", broken)
    assert code == 1
    assert "FAIL" in out and "2 passed, 1 failed" in out and "no-evil" in out
    bad = _file(tmp_path, "bad.yaml", WITH_ASSERTIONS.replace("expect: deny, name: no-evil",
                                                              "expect: maybe"))
    code, out = _run("test", "-f", bad)
    assert code == 2 and "Traceback" not in out and "expect" in out


def test_a_cli_write_beyond_the_ceiling_exits_1_and_check_confirms_it(
        store_url: str, tmp_path: Path) -> None:
    ceiling = _file(tmp_path, "ceiling.yaml", CEILING)
    code, out = _run("ceiling", "set", "-f", ceiling, "--cluster", "default",
                     "--store", store_url)
    assert code == 0, out
    code, out = _run("ceiling", "show", "--store", store_url)
    assert code == 0 and "*.github.com" in out
    code, out = _run("cluster", "update", "--set",
                     "properties.allowedFqdnList=[\"pypi.org\",\"uploads.example.net\"]",
                     "--store", store_url)
    assert code == 1, out
    line = next(x for x in out.splitlines() if x.startswith("counterexample: "))
    wide = _file(tmp_path, "wide.yaml", "restrict_outbound_network_access: true\n"
                 "allowed_fqdn_list: [pypi.org, uploads.example.net]\n")
    args = check_arguments(line.removeprefix("counterexample: "))
    assert _run("check", *args, "--policy", wide)[0] == 0  # allowed by the new policy
    assert _run("check", *args, "--policy", ceiling)[0] == 1  # denied by the ceiling
    code, out = _run("versions", "list", "--store", store_url, "-o", "json")
    assert '"number": 2' not in out
    code, out = _run("ceiling", "check", "-f", wide, "--store", store_url)
    assert code == 1 and "counterexample: " in out and "confirm: egressguard check" in out


def test_a_wider_udp_port_range_is_refused_with_a_udp_flow(tmp_path: Path) -> None:
    ceiling = _file(tmp_path, "ceiling.yaml", CEILING)
    wider = _file(tmp_path, "wider.yaml", CEILING.replace('"51820"', '"51820-51830"'))
    code, out = _run("ceiling", "check", "-f", wider, "--ceiling", ceiling)
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("counterexample: "))
    assert line.startswith("counterexample: flow ") and "/udp" in line
    args = check_arguments(line.removeprefix("counterexample: "))
    assert _run("check", *args, "--policy", wider)[0] == 0
    assert _run("check", *args, "--policy", ceiling)[0] == 1
    assert _run("ceiling", "check", "-f", ceiling, "--ceiling", ceiling)[0] == 0


def test_cli_writes_breaking_assertions_and_rollbacks_beyond_the_ceiling_exit_1(
        store_url: str, tmp_path: Path) -> None:
    _run("cluster", "update", "--add-allowed-fqdn", "evil.example", "--store", store_url)
    _run("cluster", "update", "--remove-allowed-fqdn", "evil.example", "--add-allowed-fqdn",
         "pypi.org", "--store", store_url)  # version 3
    code, out = _run("ceiling", "set", "-f", _file(tmp_path, "c.yaml", CEILING),
                     "--store", store_url)
    assert code == 0, out
    code, out = _run("rollback", "2", "--store", store_url)
    assert code == 1 and "counterexample: " in out and "evil.example" in out
    code, out = _run("cluster", "update", "--set", "properties.assertions=[{\"request\":"
                     "\"https://api.github.com/\",\"expect\":\"allow\",\"name\":\"gh\"}]",
                     "--store", store_url)
    assert code == 1 and "assertion 'gh' failed" in out
    code, out = _run("ceiling", "clear", "--store", store_url)
    assert code == 0 and "cleared" in out
    assert _run("rollback", "2", "--store", store_url)[0] == 0


def test_versions_diff_reach_lists_what_opens_and_fails_on_new_reach(
        store_url: str) -> None:
    assert _run("cluster", "update", "--add-allowed-fqdn", "*.github.com",
                "--store", store_url)[0] == 0
    assert _run("cluster", "update", "--set", "properties.networkRuleCollections=[{\"name\":"
                "\"vpn\",\"rules\":[{\"name\":\"wg\",\"destinations\":[\"20.50.0.0/16\"],"
                "\"protocols\":[\"udp\"],\"ports\":[\"51820\"],\"sources\":"
                "[\"10.1.0.0/16\"]}]}]", "--store", store_url)[0] == 0
    code, out = _run("versions", "diff", "1", "2", "--reach", "--store", store_url)
    assert code == 0
    assert "+ http,https,connect *.github.com" in out
    code, out = _run("versions", "diff", "2", "3", "--reach", "--fail-on-new-reach",
                     "--store", store_url)
    assert code == 1
    assert "+ flow/udp 20.50.0.0/16 (public part) port 51820 from 10.1.0.0/16" in out
    code, out = _run("versions", "diff", "3", "1", "--reach", "--fail-on-new-reach",
                     "--store", store_url)
    assert code == 0 and "- " in out and "0 regions become reachable" in out


def test_replay_reports_what_a_candidate_would_flip_on_a_recorded_log(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import os
    import time

    from egressguard.audit.events import DecisionEvent
    from egressguard.audit.log import AuditLog

    monkeypatch.setenv("EGRESSGUARD_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    now = time.time()

    def event(host: str, permitted: bool, who: str = "build-agent", age: float = 60,
              **extra: object) -> DecisionEvent:
        fields: dict[str, object] = dict(
            time=now - age, cluster="default", kind="connect", host=host, port=443,
            verdict="allow" if permitted else "deny", permitted=permitted,
            layer="allowed_fqdn", rule="r", reason="x", client_address="10.1.2.3",
            client_identity=who, connection_id="c")
        fields.update(extra)
        return DecisionEvent(**fields)  # type: ignore[arg-type]

    with AuditLog(store_url) as log:
        for _ in range(3):
            log.emit(event("pypi.org", True))
        log.emit(event("pypi.org", True, phase="close", bytes_up=10))  # not a decision
        log.emit(event("evil.example", False, who="", client_address="10.9.9.9"))
        log.emit(event("api.github.com", True))  # unchanged
        log.emit(event("pypi.org", True, who="old-job", age=30 * 86400))  # outside 7d
        log.flush()
    candidate = _file(tmp_path, "candidate.yaml", "restrict_outbound_network_access: true\n"
                      "allowed_fqdn_list: [api.github.com, evil.example]\n")
    code, out = _run("replay", "--policy", candidate, "--since", "7d", "--store", store_url)
    assert code == 0, out
    assert "newly denied: 3 requests from build-agent to pypi.org:443 (connect)" in out
    assert "newly allowed: 1 request from 10.9.9.9 to evil.example:443 (connect)" in out
    assert "5 recorded decisions replayed: 3 newly denied, 1 newly allowed" in out
    assert "old-job" not in out


def test_a_kusto_command_beyond_the_ceiling_exits_1_with_a_callout_counterexample(
        sqlite_url: str, tmp_path: Path) -> None:
    assert _run("cluster", "update", "--set",
                "properties.restrictOutboundNetworkAccess=Disabled",
                "--store", sqlite_url)[0] == 0
    assert _run("ceiling", "set", "-f", _file(tmp_path, "c.json", "{}"),
                "--store", sqlite_url)[0] == 0
    code, out = _run("mgmt", ".alter cluster policy callout @'[{\"CalloutType\":\"sql\","
                     "\"CalloutUriRegex\":\"^https://x\\\\.evil\\\\.example/\","
                     "\"CanCall\":true}]'", "--store", sqlite_url)
    assert code == 1, out
    assert "counterexample: sql https://x.evil.example/" in out
