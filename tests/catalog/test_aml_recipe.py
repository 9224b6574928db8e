"""Seed 004's Azure ML recipe as written (issue 15, item 1): `profile aml --storage-account X`
(firewall mode, the default) lets X through and what `/services/Azure/MachineLearning`
stands for, and refuses every other account; resource-group and subscription entries match
the accounts the inventory knows; the alias is the accounts listed for it, never a name
pattern an attacker could register into."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.catalog import references, storage_aliases
from egressguard.cli.main import app
from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import load_policy_text
from tests.gateway.conftest import echo, gateway_factory

__all__ = ["echo", "gateway_factory"]
pytestmark = pytest.mark.timeout(60)
runner = CliRunner()
SUB = "/subscriptions/0000-sub/resourceGroups/ml-rg/providers/Microsoft.Storage/storageAccounts"
ML_ALIAS = "/services/Azure/MachineLearning"


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _profile(*storage: str) -> str:
    args = [a for s in storage for a in ("--storage-account", s)]
    return _cli("profile", "aml", "--region", "westeurope", *args)


def _allowed(text: str, host: str, port: int = 443) -> bool:
    snap = compile_policy(load_policy_text(text), references())
    return snap.decide(Request(kind=Kind.CONNECT, host=host, port=port)).allowed


def test_default_recipe_allows_the_workspace_storage_only(home: Path) -> None:
    text = _profile("mywsstorage")
    for service in ("blob", "file", "queue", "table", "dfs"):
        assert _allowed(text, f"mywsstorage.{service}.core.windows.net")
    assert not _allowed(text, "mywsstorage.blob.core.windows.net", 80)
    assert not _allowed(text, "attackerstore.blob.core.windows.net")
    # A name under a storage domain that is no account host could lead anywhere.
    assert not _allowed(text, "attackerstore.privatelink.blob.core.windows.net")
    assert not _allowed(text, "blob.core.windows.net")


def test_the_alias_is_the_accounts_listed_for_it_never_a_pattern(home: Path) -> None:
    text = _profile("mywsstorage")
    assert storage_aliases()[ML_ALIAS] == ()
    assert not _allowed(text, "umsaattacker.blob.core.windows.net")  # seed 003's umsa*
    _cli("storage-accounts", "add", "mlmanaged01", "--id", f"{SUB}/mlmanaged01",
         "--alias", ML_ALIAS)
    assert storage_aliases()[ML_ALIAS] == ("mlmanaged01",)
    assert "mlmanaged01" in storage_aliases()["/services/Azure"]  # through its includes
    assert _allowed(text, "mlmanaged01.blob.core.windows.net")
    assert not _allowed(text, "mlmanaged012.blob.core.windows.net")  # exact, not a prefix
    assert not _allowed(text, "umsaattacker.blob.core.windows.net")


def _arm_list(tmp_path: Path) -> Path:
    path = tmp_path / "resources.json"
    rg = "/subscriptions/0000-sub/resourceGroups/{}/providers/Microsoft.Storage/" \
         "storageAccounts/{}"
    path.write_text(json.dumps({"value": [
        {"id": rg.format("ml-rg", "inrgone"), "name": "inrgone",
         "type": "Microsoft.Storage/storageAccounts"},
        {"id": rg.format("other-rg", "otherrgone"), "name": "otherrgone",
         "type": "Microsoft.Storage/storageAccounts"},
        {"id": "/subscriptions/0000-sub/resourceGroups/ml-rg/providers/Microsoft.KeyVault/"
               "vaults/kv", "name": "kv", "type": "Microsoft.KeyVault/vaults"}]}))
    return path


def test_resource_group_and_subscription_entries_match_the_inventory(
        home: Path, tmp_path: Path) -> None:
    text = _profile("/subscriptions/0000-sub/resourceGroups/ML-RG")
    assert not _allowed(text, "inrgone.blob.core.windows.net")  # nothing known yet
    out = _cli("storage-accounts", "import", str(_arm_list(tmp_path)))
    assert "imported 2 storage accounts" in out
    assert _allowed(text, "inrgone.blob.core.windows.net")
    assert not _allowed(text, "otherrgone.blob.core.windows.net")
    whole = _profile("/subscriptions/0000-sub")
    assert _allowed(whole, "otherrgone.blob.core.windows.net")
    assert not _allowed(whole, "unknownacct.blob.core.windows.net")
    listed = json.loads(_cli("storage-accounts", "list", "-o", "json"))
    assert set(listed) == {"inrgone", "otherrgone"}
    _cli("storage-accounts", "remove", "inrgone")
    assert not _allowed(text, "inrgone.blob.core.windows.net")


@pytest.mark.parametrize(("args", "message"), [
    (("add", "Bad_Name", "--id", f"{SUB}/x"), "3-24 lower-case"),
    (("add", "good", "--id", "/subscriptions/s/whatever"), "is not /subscriptions/"),
    (("add", "good", "--id", f"{SUB}/other"), "names account 'other'"),
    (("add", "good", "--id", f"{SUB}/good", "--alias", "MachineLearning"), "/services/"),
    (("remove", "nothere"), "no storage account"),
    (("import", "/nonexistent.json"), "No such file"),
])
def test_bad_inventory_input_is_one_line(home: Path, args: tuple[str, ...],
                                         message: str) -> None:
    result = runner.invoke(app, ["storage-accounts", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_malformed_arm_json_names_the_file_and_line(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"value": [\n  {"id": 1,}\n]}')
    result = runner.invoke(app, ["storage-accounts", "import", str(bad)])
    assert result.exit_code == 2 and f"{bad}: line 2" in result.output


def _connect(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


def test_running_gateway_enforces_the_recipe(home: Path, gateway_factory, echo) -> None:
    # The accounts point at a loopback echo server; loopback is trusted for allowed names,
    # and the rule's port widened to the echo server's, so that an allowed tunnel really
    # reaches it.
    text = _profile("mywsstorage") + "trusted_ranges: [127.0.0.0/8]\n"
    text = text.replace('protocols: ["https:443"]', f'protocols: ["https:{echo.port}"]')
    gw = gateway_factory(text, resolve={"mywsstorage.blob.core.windows.net": "127.0.0.1",
                                        "attackerstore.blob.core.windows.net": "127.0.0.1"})
    port = gw.gateway.addresses[0][1]
    refused = _connect(port, f"attackerstore.blob.core.windows.net:{echo.port}")
    assert refused.startswith(b"HTTP/1.1 403") and b"service_endpoint" in refused
    assert _connect(port, f"mywsstorage.blob.core.windows.net:{echo.port}").startswith(
        b"HTTP/1.1 200")
    allowed = gw.sink.wait_for(lambda e: e.host == "mywsstorage.blob.core.windows.net")
    assert allowed.verdict == "allow"
    assert allowed.rule == "application:aml-storage-service-endpoint/storage-service-endpoint"
