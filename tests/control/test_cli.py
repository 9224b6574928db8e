"""The az-style CLI on the store directly (principal = the OS user)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.store import Store

runner = CliRunner()
pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_cluster_update_set_add_remove_and_versions(sqlite_url: str) -> None:
    code, out = _run("cluster", "update", "--store", sqlite_url, "--set",
                     "properties.restrictOutboundNetworkAccess=Enabled", "--add-allowed-fqdn",
                     "adedicated.sql.azuresynapse.net", "--add-allowed-fqdn", "b.example.com",
                     "-o", "json")
    assert code == 0, out
    props = json.loads(out)["properties"]
    assert props["allowedFqdnList"] == ["adedicated.sql.azuresynapse.net", "b.example.com"]
    code, out = _run("cluster", "update", "--store", sqlite_url, "--remove-allowed-fqdn",
                     "b.example.com", "-o", "json")
    assert json.loads(out)["properties"]["allowedFqdnList"] == [
        "adedicated.sql.azuresynapse.net"]
    code, out = _run("versions", "list", "--store", sqlite_url, "-o", "json")
    versions = json.loads(out)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert versions[0]["principal"] not in ("system", "")
    code, out = _run("versions", "diff", "1", "2", "--store", sqlite_url)
    assert "+- adedicated.sql.azuresynapse.net" in out
    code, out = _run("rollback", "1", "--store", sqlite_url, "-o", "json")
    assert json.loads(out)["properties"]["version"] == 4
    assert json.loads(out)["properties"]["allowedFqdnList"] == []


def test_cluster_show_table_keeps_regexes_literal(sqlite_url: str) -> None:
    Store(sqlite_url).close()
    _run("cluster", "update", "--store", sqlite_url, "--set",
         "properties.restrictOutboundNetworkAccess=Disabled")
    code, out = _run("mgmt", ".show cluster policy callout", "--store", sqlite_url, "-o", "json")
    assert code == 0
    assert "[a-z0-9]{3,22}" in json.loads(out)["Tables"][0]["Rows"][0][2]


@pytest.mark.parametrize(("args", "message"), [
    (("mgmt", ".show cluster polcy callout"), "expected 'policy'"),
    (("mgmt", ".alter cluster policy callout @'[]'"), "restricts outbound"),
    (("cluster", "update", "--set", "restrictOutboundNetworkAccess=1"), "properties.<name>"),
    (("cluster", "update", "--set", "properties.allowedFqdnList=['a..b']"), "allowedFqdnList"),
    (("cluster", "update", "--remove-allowed-fqdn", "x.example.com"), "not in"),
    (("cluster", "show", "--name", "nope"), "not found"),
    (("rollback", "9"), "no version 9"),
    (("token", "create", "--name", "x", "--role", "root"), "unknown role"),
])
def test_errors_exit_2_with_a_message(sqlite_url: str, args: tuple[str, ...],
                                      message: str) -> None:
    code, out = _run(*args, "--store", sqlite_url)
    assert code == 2 and message in out, out


def test_tokens_create_list_revoke_rotate(sqlite_url: str) -> None:
    code, out = _run("token", "create", "--name", "ci", "--role", "viewer", "--store",
                     sqlite_url, "-o", "json")
    created = json.loads(out)
    assert created["token"].startswith("egt_")
    code, out = _run("token", "list", "--store", sqlite_url, "-o", "json")
    assert created["token"] not in out and json.loads(out)[0]["name"] == "ci"
    assert _run("token", "revoke", "ci", "--store", sqlite_url)[0] == 0
    code, out = _run("token", "rotate-bootstrap", "--store", sqlite_url)
    assert code == 0 and "egt_" in out


def test_token_create_expires_and_rotate_by_name(store_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from egressguard.store.tokens import hash_token

    code, out = _run("token", "create", "--name", "ci", "--role", "viewer", "--expires",
                     "30d", "--store", store_url, "-o", "json")
    assert code == 0, out
    created = json.loads(out)
    left = datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=29) < left <= timedelta(days=30)
    code, out = _run("token", "rotate", "ci", "--store", store_url, "-o", "json")
    assert code == 0, out
    rotated = json.loads(out)
    assert rotated["token"] != created["token"] and rotated["role"] == "viewer"
    left = datetime.fromisoformat(rotated["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < left <= timedelta(days=90)
    with Store(store_url) as st:
        assert st.principal_for(hash_token(created["token"])) is None
        assert st.principal_for(hash_token(rotated["token"])) is not None


@pytest.mark.parametrize("args", [("create", "--name", "ci", "--role", "viewer"),
                                  ("rotate", "ci")])
def test_token_bad_expiry_is_one_line_exit_2(sqlite_url: str, args: tuple[str, ...]) -> None:
    with Store(sqlite_url) as st:
        st.create_token("ci", "viewer", "t")
    code, out = _run("token", *args, "--expires", "forever", "--store", sqlite_url)
    assert code == 2 and "--expires" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
