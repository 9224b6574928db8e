"""`egressguard explain`: one request, or a client's newest denials read from the real
audit log, each with its layer, rule, change and new findings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.cli.main import build_app
from tests.audit.conftest import audit_key, event  # noqa: F401 (fixture)

POLICY = """\
restrict_outbound_network_access: true
allowed_fqdn_list: [ok.example.com]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _run(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(build_app(), list(args))
    return done.exit_code, done.stdout, done.stderr


def test_explain_one_url_as_yaml_and_table(policy: Path) -> None:
    code, out, _ = _run("explain", "https://api.example.com/", "-f", str(policy), "-o", "json")
    assert code == 0
    found = json.loads(out)
    assert (found["verdict"], found["layer"], found["rule"]) == ("deny", "default", "default")
    assert found["change"]["permits"] is True
    assert "api.example.com" in found["change"]["diff"]
    code, out, _ = _run("explain", "https://api.example.com/", "-f", str(policy))
    assert "change:  allow https:443 to api.example.com" in out
    assert "risks the change raises: none" in out


def test_client_last_n_reads_the_newest_distinct_denials_of_that_client_only(
        sqlite_url: str, audit_key: bytes, policy: Path) -> None:  # noqa: F811
    now = time.time()
    records = [
        event(time=now - 50, host="old.example.com", verdict="deny", permitted=False,
              layer="default", rule="default"),
        event(time=now - 40, host="ok.example.com"),                         # allowed
        event(time=now - 30, host="other.example.com", verdict="deny", permitted=False,
              client_address="10.9.9.9", client_identity=""),                  # other client
        event(time=now - 20, host="new.example.com", verdict="deny", permitted=False,
              layer="default", rule="default"),
        event(time=now - 10, host="new.example.com", verdict="deny", permitted=False,
              layer="default", rule="default"),                                # repeated
        event(time=now - 5, kind="http", host="plain.example.com", port=80,
              verdict="deny", permitted=True, layer="default", rule="default"),  # would-deny
    ]
    with AuditLog(sqlite_url) as log:
        for r in records:
            log.emit(r)
        log.flush()
    code, out, err = _run("explain", "--client", "10.1.2.3", "--last", "2", "-f", str(policy),
                          "--store", sqlite_url, "-o", "json")
    assert code == 0, err
    found = json.loads(out)
    assert found["client"] == "10.1.2.3"
    assert [d["request"] for d in found["denials"]] == ["http plain.example.com:80",
                                                        "connect new.example.com:443"]
    assert found["denials"][0]["recorded"]["outcome"] == "would-deny"
    assert "+    - http:80" in found["denials"][0]["change"]["diff"]
    code, out, _ = _run("explain", "--client", "build-agent", "--last", "5", "-f",
                        str(policy), "--store", sqlite_url, "-o", "json")
    assert [d["request"] for d in json.loads(out)["denials"]] == [
        "http plain.example.com:80", "connect new.example.com:443",
        "connect old.example.com:443"]


def test_a_url_and_a_client_together_is_one_line_and_exit_2(policy: Path) -> None:
    code, _, err = _run("explain", "https://a.example.com/", "--client", "10.0.0.1")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: give a URL or --client IP, not both (hint: egressguard explain --help)"]
