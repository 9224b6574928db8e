"""`recommend --diff --policy p.yaml` compiles the policy as `check` does (with the
catalog's references): a policy naming an FQDN tag used to crash with CompileError."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.cli.main import app
from tests.audit.conftest import event

AKS = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: aks
    priority: 200
    rules:
      - {name: aks, fqdn_tags: [AzureKubernetesService], protocols: ['https:443']}
"""


def test_diff_against_a_policy_file_with_an_fqdn_tag_check_accepts(
        tmp_path: Path, sqlite_url: str, audit_key: bytes) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(AKS)
    runner = CliRunner()
    checked = runner.invoke(app, ["check", "https://mcr.microsoft.com/", "--policy",
                                  str(policy)])
    assert checked.exit_code == 0, checked.output
    with AuditLog(sqlite_url) as log:
        log.emit(event(host="mcr.microsoft.com"))
        log.emit(event(host="new.example.com"))
        log.flush()
    result = runner.invoke(app, ["recommend", "--since", "1d", "--store", sqlite_url,
                                 "--diff", "--policy", str(policy)])
    assert result.exit_code == 0, result.output
    assert ("= connect mcr.microsoft.com:443 as build-agent: already allowed by "
            "application:aks/aks") \
        in result.output
    assert "+ connect new.example.com:443 as build-agent: newly allowed" in result.output


def test_diff_against_a_policy_naming_an_unknown_tag_is_one_line_exit_2(
        tmp_path: Path, sqlite_url: str, audit_key: bytes) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(AKS.replace("AzureKubernetesService", "NoSuchTag"))
    result = CliRunner().invoke(app, ["recommend", "--since", "1d", "--store", sqlite_url,
                                      "--diff", "--policy", str(policy)])
    assert result.exit_code == 2 and "NoSuchTag" in result.output
    assert "Traceback" not in result.output
