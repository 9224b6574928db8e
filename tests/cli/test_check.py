"""`egressguard check`, run as the installed console script: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("egressguard")
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
"""

pytestmark = pytest.mark.timeout(120)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "check", *args], capture_output=True, text=True,
                          timeout=100, check=False)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("check") / "policy.yaml"
    path.write_text(POLICY)
    return str(path)


def test_allowed_url_exits_0_and_prints_verdict_layer_rule_reason(policy: str) -> None:
    done = run("https://mcr.microsoft.com/v2/", "--policy", policy)
    assert done.returncode == 0, done.stderr
    assert "verdict: allow" in done.stdout
    assert "layer:   application" in done.stdout
    assert "rule:    application:aks/mcr" in done.stdout
    assert "reason:  mcr.microsoft.com:443 allowed by application rule aks/mcr" in done.stdout


def test_denied_callout_exits_1_with_json(policy: str) -> None:
    done = run("--type", "SQL", "https://other.database.windows.net", "--policy", policy,
               "--json")
    assert done.returncode == 1, done.stderr
    decision = json.loads(done.stdout)
    assert decision["verdict"] == "deny" and decision["permitted"] is False
    assert "is not allowed by the callout policy" in decision["reason"]


def test_metadata_address_in_decimal_is_denied_by_default_policy() -> None:
    done = run("http://2852039166/latest/meta-data/", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["rule"] == "guard:link-local"


def test_connect_kind_with_port_and_the_allowed_fqdn_list(policy: str) -> None:
    done = run("my-eventhub.servicebus.windows.net:443", "--kind", "connect",
               "--policy", policy, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layer"] == "allowed_fqdn"


def test_invalid_policy_file_exits_2_naming_file_line_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("callouts:\n  - {CalloutType: sql, CalloutUriRegex: '(', CanCall: true}\n")
    done = run("https://example.com", "--policy", str(bad))
    assert done.returncode == 2
    assert str(bad) in done.stderr and "line 2" in done.stderr
    assert "invalid regular expression" in done.stderr


def test_invalid_host_exits_2() -> None:
    done = run("https://xn--zz.example/")
    assert done.returncode == 2
    assert "invalid host" in done.stdout


def _check_in_process(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    from typer.testing import CliRunner

    from egressguard.cli.main import app

    result = CliRunner().invoke(app, ["check", *args], env=env)
    return result.exit_code, result.output


def test_without_policy_check_decides_against_the_stores_cluster(store_url: str) -> None:
    from egressguard.policy import Policy
    from egressguard.store import Store

    with Store(store_url) as store:
        store.commit("default", Policy(restrict_outbound_network_access=True,
                                       allowed_fqdn_list=["api.example.com"]), "op", "one")
        store.commit("prod", Policy(restrict_outbound_network_access=True), "op", "closed",
                     create=True)
    env = {"EGRESSGUARD_STORE": store_url}
    assert _check_in_process("https://api.example.com/", env=env)[0] == 0
    assert _check_in_process("https://other.example.com/", env=env)[0] == 1
    code, out = _check_in_process("https://api.example.com/", "--cluster", "prod", env=env)
    assert code == 1 and "restricted" in out
    code, out = _check_in_process("https://api.example.com/", "--cluster", "nope", env=env)
    assert code == 2 and out.startswith("error: cluster 'nope' not found")


def test_without_policy_or_store_check_is_deny_all_and_creates_no_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EGRESSGUARD_STORE", raising=False)
    code, out = _check_in_process("https://example.com/",
                                  env={"EGRESSGUARD_HOME": str(tmp_path / "home")})
    assert code == 1 and "verdict: deny" in out
    assert not (tmp_path / "home" / "egressguard.db").exists()


def test_policy_and_cluster_together_is_bad_input(policy: str) -> None:
    code, out = _check_in_process("https://example.com/", "--policy", policy,
                                  "--cluster", "prod")
    assert code == 2 and "not both" in out
