"""Every policy error names the file, the line and the path: a mistyped CIDR does not leak
Python's `ipaddress` message, and an unknown service tag, FQDN tag or storage alias (found
only when the policy is compiled against the catalog) points at the line that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from egressguard.engine import CompileError, References, compile_policy
from egressguard.policy import Policy, PolicyError, load_policy

EGRESSGUARD = str(Path(sys.executable).with_name("egressguard"))

NETWORK = """\
restrict_outbound_network_access: true
network_rule_collections:
  - name: net
    rules:
      - name: r
        destinations: [{dests}]
        protocols: [tcp]
        ports: [443]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("typo", ["1.2.3.4-5", "10.0.0.0/33", "10.0.0.300", "fe80::1::2",
                                  "10.0.0.0/8/8"])
def test_a_mistyped_address_is_refused_with_line_and_path_not_pythons_message(
        tmp_path: Path, typo: str) -> None:
    path = _write(tmp_path, NETWORK.format(dests=f"'{typo}'"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    [problem] = caught.value.problems
    assert problem.line == 6
    assert problem.path == "network_rule_collections[0].rules[0].destinations[0]"
    assert problem.reason.startswith(f"destination {typo!r} is not an IP address or CIDR")
    assert "does not appear to be" not in str(caught.value)


def test_a_name_starting_with_a_digit_is_a_name_not_a_broken_cidr(tmp_path: Path) -> None:
    # The compiler took any destination starting with a digit for a CIDR: ValueError.
    policy = load_policy(_write(tmp_path, NETWORK.format(dests="1password.com, 10.1.0.0/16")))
    assert policy.network_rule_collections[0].rules[0].destinations == [
        "1password.com", "10.1.0.0/16"]
    compile_policy(policy, References())


def test_an_unknown_service_tag_names_file_line_and_path(tmp_path: Path) -> None:
    path = _write(tmp_path, NETWORK.format(dests="10.0.0.0/8, NoSuchTag"))
    with pytest.raises(CompileError) as caught:
        compile_policy(load_policy(path), References())
    assert str(caught.value) == (
        f"{path}:6: network_rule_collections[0].rules[0].destinations[1]: unknown service "
        "tag 'NoSuchTag' (network rule network:net/r)")
    assert caught.value.hint and "servicetags import" in caught.value.hint


def test_an_unknown_fqdn_tag_names_the_line_of_the_tag_in_a_later_collection(
        tmp_path: Path) -> None:
    # Collections compile in priority order; the path is the file's order.
    path = _write(tmp_path, """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: late
    priority: 900
    rules:
      - {name: ok, targets: [a.example.com]}
  - name: early
    priority: 100
    rules:
      - name: one
        targets: [b.example.com]
      - name: tagged
        fqdn_tags:
          - NoSuchTag
""")
    with pytest.raises(CompileError) as caught:
        compile_policy(load_policy(path), References())
    assert str(caught.value).startswith(
        f"{path}:14: application_rule_collections[1].rules[1].fqdn_tags[0]: unknown FQDN "
        "tag 'NoSuchTag' (application rule application:early/tagged)")


def test_an_unknown_storage_alias_names_file_line_and_path(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
restrict_outbound_network_access: true
service_endpoint_policies:
  - name: sep
    aliases:
      - /services/Azure/NoSuchAlias
""")
    with pytest.raises(CompileError) as caught:
        compile_policy(load_policy(path), References())
    assert str(caught.value).startswith(
        f"{path}:5: service_endpoint_policies[0].aliases[0]: unknown alias")


def test_a_policy_built_in_code_gets_the_path_alone() -> None:
    policy = Policy.model_validate({"network_rule_collections": [
        {"name": "net", "rules": [{"name": "r", "destinations": ["NoSuchTag"]}]}]})
    with pytest.raises(CompileError, match=r"^network_rule_collections\[0\]\.rules\[0\]\."
                                           r"destinations\[0\]: unknown service tag"):
        compile_policy(policy, References())


def test_the_cli_prints_the_location_once_in_one_line_with_the_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, NETWORK.format(dests="NoSuchTag"))
    env = {**os.environ, "EGRESSGUARD_HOME": str(tmp_path / "home")}
    checked = subprocess.run([EGRESSGUARD, "check", "https://a.example.com/", "-f",
                              str(path)], capture_output=True, text=True, env=env,
                             timeout=60, check=False)
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        f"error: {path}:6: network_rule_collections[0].rules[0].destinations[0]: unknown "
        "service tag 'NoSuchTag' (network rule network:net/r) (hint: import a service-tag "
        "file with `egressguard servicetags import FILE`)"]
    validated = subprocess.run([EGRESSGUARD, "validate", "-f", str(path)], capture_output=True,
                               text=True, env=env, timeout=60, check=False)
    assert validated.returncode == 1
    assert validated.stderr.splitlines() == [
        f"{path}:6: network_rule_collections[0].rules[0].destinations[0]: unknown service "
        "tag 'NoSuchTag' (network rule network:net/r)"]
