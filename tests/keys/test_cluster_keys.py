"""A cluster's `keyVaultProperties` through the API and `cluster update --set`: stored
beside the policy, refused with the reason when the vault or identity is unfit, and
`state` (`Running`/`Suspended`) with the key in use in what `cluster show` reports."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from egressguard.cli.main import build_app
from egressguard.control.api import create_app
from egressguard.keys.vault import KeyVault
from egressguard.store import Store
from tests.keys.conftest import MASTER, audit_vault, unique

pytestmark = pytest.mark.timeout(60)
FIELD = "properties.keyVaultProperties"


@pytest.fixture(autouse=True)
def master(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())


@pytest.fixture
def vault(store_url: str) -> Iterator[KeyVault]:
    v = audit_vault(store_url, unique("cmk"))
    yield v
    v.close()


def kvp(vault: KeyVault, **changes: str) -> dict[str, str]:
    return {"keyName": "audit", "keyVersion": "", "keyVaultUri": f"vault://{vault.name}",
            "userIdentity": "gateway", **changes}


@pytest.fixture
def api(store_url: str) -> Iterator[tuple[TestClient, dict[str, str], Store]]:
    store = Store(store_url)
    token = store.create_token(unique("op"), "operator", "t")[0]
    with TestClient(create_app(store)) as client:
        yield client, {"Authorization": f"Bearer {token}"}, store
    store.close()


def test_patch_stores_the_key_and_show_reports_running_with_the_key_in_use(
        api: tuple[TestClient, dict[str, str], Store], vault: KeyVault) -> None:
    client, headers, store = api
    before = store.latest_number("default")
    got = client.patch("/v1/clusters/default", headers=headers,
                       json={"properties": {"keyVaultProperties": kvp(vault)}})
    assert got.status_code == 200, got.text
    props = got.json()["properties"]
    assert props["keyVaultProperties"] == kvp(vault)
    latest = vault.get_key("audit").latest
    assert props["state"] == "Running"
    assert props["keyInUse"] == f"vault://{vault.name}/keys/audit/{latest}"
    assert store.latest_number("default") == before  # the key is not a policy version
    # GET reads it back, and a GET body PUT back is accepted (read-only members ignored).
    resource = client.get("/v1/clusters/default", headers=headers).json()
    assert resource["properties"]["keyVaultProperties"] == kvp(vault)
    assert client.put("/v1/clusters/default", headers=headers,
                      json={"properties": resource["properties"]}).status_code == 200
    # Rotation: an unset version follows the latest; the key in use moves with it.
    newer = vault.rotate_key("audit").latest
    props = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert props["keyInUse"].endswith(f"/{newer}") and newer != latest


def test_a_vault_without_purge_protection_is_refused_with_the_reason(
        api: tuple[TestClient, dict[str, str], Store], store_url: str) -> None:
    client, headers, _ = api
    weak = KeyVault(store_url, unique("weak"), master_key=MASTER, purge_protection=False)
    weak.create_key("audit", "AES", 256)
    weak.grant("gateway", "get,wrapKey,unwrapKey")
    got = client.patch("/v1/clusters/default", headers=headers,
                       json={"properties": {"keyVaultProperties": kvp(weak)}})
    weak.close()
    assert got.status_code == 422
    assert "no purge protection" in got.text and f"{FIELD}.keyVaultUri" in got.text
    props = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert "keyVaultProperties" not in props and props["state"] == "Running"


def test_an_identity_without_unwrap_is_refused_naming_the_grant(
        api: tuple[TestClient, dict[str, str], Store], vault: KeyVault) -> None:
    client, headers, _ = api
    vault.grant("weakling", "get,wrapKey")
    got = client.patch("/v1/clusters/default", headers=headers, json={
        "properties": {"keyVaultProperties": kvp(vault, userIdentity="weakling")}})
    assert got.status_code == 422
    assert "lacks unwrapKey" in got.text and "keyvault access grant" in got.text


def test_revoked_access_or_a_disabled_key_shows_suspended_with_the_reason(
        api: tuple[TestClient, dict[str, str], Store], vault: KeyVault) -> None:
    client, headers, _ = api
    assert client.patch("/v1/clusters/default", headers=headers, json={
        "properties": {"keyVaultProperties": kvp(vault)}}).status_code == 200
    vault.set_enabled("audit", False)
    props = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert props["state"] == "Suspended" and "disabled" in props["stateReason"]
    assert "keyInUse" not in props
    vault.set_enabled("audit", True)
    vault.revoke("gateway", "unwrapKey")
    props = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert props["state"] == "Suspended" and "lacks unwrapKey" in props["stateReason"]


def test_cli_update_sets_one_member_and_refuses_an_unfit_vault_with_exit_2(
        store_url: str, vault: KeyVault) -> None:
    app, runner = build_app(["cluster"]), CliRunner()

    def cli(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["cluster", *args, "--store", store_url, "-o", "json"])
        return result.exit_code, result.stdout, result.stderr

    base = "properties.keyVaultProperties"
    code, out, err = cli("update", "--set", f"{base}.keyName=audit",
                         "--set", f"{base}.keyVaultUri=vault://{vault.name}",
                         "--set", f"{base}.userIdentity=gateway")
    assert code == 0, err
    assert json.loads(out)["properties"]["state"] == "Running"
    pinned = vault.get_key("audit").latest
    vault.rotate_key("audit")
    code, out, err = cli("update", "--set", f"{base}.keyVersion={pinned}")  # merged
    assert code == 0, err
    props = json.loads(out)["properties"]
    assert props["keyVaultProperties"] == kvp(vault, keyVersion=pinned)
    assert props["keyInUse"].endswith(f"/{pinned}")
    code, out, err = cli("update", "--set", f"{base}.userIdentity=nobody")
    assert code == 2 and "'nobody' lacks get" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = cli("show")
    assert code == 0 and json.loads(out)["properties"]["keyVaultProperties"][
        "userIdentity"] == "gateway"
    code, _, err = cli("update", "--set", "properties.allowedFqdnList.x=1")
    assert code == 2 and "keyVaultProperties.<member>" in err


def test_an_unusable_master_key_is_503_with_the_reason_not_a_crash(
        api: tuple[TestClient, dict[str, str], Store], vault: KeyVault,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, headers, _ = api
    assert client.patch("/v1/clusters/default", headers=headers, json={
        "properties": {"keyVaultProperties": kvp(vault)}}).status_code == 200
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", "not base64!")
    got = client.get("/v1/clusters/default", headers=headers)
    assert got.status_code == 503 and "not base64" in got.json()["error"]["message"]
    got = client.patch("/v1/clusters/default", headers=headers, json={
        "properties": {"keyVaultProperties": kvp(vault, keyVersion="")}})
    assert got.status_code == 503
