"""`keyVaultProperties`: the shape, and refusing a vault without soft delete and purge
protection or an identity without get/wrapKey/unwrapKey, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from egressguard.keys.cluster import (
    InvalidKeyVaultProperties,
    KeyVaultProperties,
    VaultFacts,
    parse,
    refusals,
    validate,
)
from egressguard.keys.provider import KeyInfo
from egressguard.keys.vault import KeyVault
from tests.keys.conftest import MASTER

GOOD = {"keyName": "audit", "keyVersion": "", "keyVaultUri": "vault://cmk",
        "userIdentity": "gateway"}
KEY = KeyInfo("vault://cmk", "audit", "RSA", 2048, ("aa", "bb"), True)


def facts(**changes: object) -> VaultFacts:
    base: dict[str, object] = {"soft_delete": True, "purge_protection": True,
                               "retention_days": 90, "identity": "gateway",
                               "permissions": frozenset({"get", "wrapKey", "unwrapKey"}),
                               "key": KEY}
    base.update(changes)
    return VaultFacts(**base)  # type: ignore[arg-type]


def test_the_arm_shape_round_trips_and_an_empty_version_follows_the_latest() -> None:
    props = parse(GOOD)
    assert props == KeyVaultProperties("audit", "vault://cmk", None, "gateway")
    assert props.to_arm() == GOOD and refusals(props, facts()) == []


@pytest.mark.parametrize(("value", "where", "reason"), [
    ([], "properties.keyVaultProperties", "JSON object"),
    ({**GOOD, "keyVaultURL": "x"}, "keyVaultProperties.keyVaultURL", "unknown member"),
    ({**GOOD, "keyName": ""}, "keyVaultProperties.keyName", "required"),
    ({**GOOD, "keyName": 7}, "keyVaultProperties.keyName", "expected a string"),
    ({**GOOD, "keyVersion": "../x"}, "keyVaultProperties.keyVersion", "hexadecimal"),
    ({**GOOD, "keyVaultUri": "https://evil.example/"}, "keyVaultProperties.keyVaultUri",
     "vault://"),
])
def test_bad_shapes_are_refused_naming_the_member(value: object, where: str,
                                                  reason: str) -> None:
    with pytest.raises(InvalidKeyVaultProperties) as refused:
        parse(value)
    assert any(where in f and reason in r for f, r in refused.value.problems)


@pytest.mark.parametrize(("changes", "where", "reason"), [
    ({"soft_delete": False}, "keyVaultUri", "soft delete off"),
    ({"purge_protection": False}, "keyVaultUri", "no purge protection"),
    ({"permissions": frozenset({"get", "wrapKey"})}, "userIdentity", "lacks unwrapKey"),
    ({"permissions": frozenset()}, "userIdentity", "lacks get, wrapKey, unwrapKey"),
    ({"key": None}, "keyName", "not found"),
    ({"key": KeyInfo("vault://cmk", "audit", "RSA", 2048, ("aa",), False)}, "keyName",
     "disabled"),
])
def test_unfit_vaults_keys_and_identities_are_refused_with_the_reason(
        changes: dict[str, object], where: str, reason: str) -> None:
    problems = refusals(parse(GOOD), facts(**changes))
    assert len(problems) == 1
    field, why = problems[0]
    assert field == f"properties.keyVaultProperties.{where}" and reason in why


def test_a_pinned_version_must_exist() -> None:
    problems = refusals(parse({**GOOD, "keyVersion": "cc"}), facts())
    assert problems == [("properties.keyVaultProperties.keyVersion",
                         "key 'audit' has no version 'cc'")]


def test_validate_reads_the_real_vault(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    weak = KeyVault(url, "weak", master_key=MASTER, purge_protection=False)
    weak.create_key("audit", "AES", 256)
    weak.grant("gateway", "get,wrapKey")
    with pytest.raises(InvalidKeyVaultProperties) as refused:
        validate({**GOOD, "keyVaultUri": "vault://weak"}, url, MASTER, "cluster-default")
    reasons = " ".join(r for _, r in refused.value.problems)
    assert "no purge protection" in reasons and "lacks unwrapKey" in reasons
    weak.enable_purge_protection()
    weak.grant("gateway", "unwrapKey")
    props = validate({**GOOD, "keyVaultUri": "vault://weak"}, url, MASTER, "cluster-default")
    assert props.user_identity == "gateway"
    # No userIdentity: the cluster's own identity must hold the grants.
    with pytest.raises(InvalidKeyVaultProperties, match="'cluster-default' lacks get"):
        validate({**GOOD, "keyVaultUri": "vault://weak", "userIdentity": ""}, url, MASTER,
                 "cluster-default")
    with pytest.raises(InvalidKeyVaultProperties, match="vault 'absent' not found"):
        validate({**GOOD, "keyVaultUri": "vault://absent"}, url, MASTER, "cluster-default")
    weak.close()
