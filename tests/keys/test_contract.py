"""One contract for every key provider: the built-in vault and a PKCS#11 HSM (SoftHSM2)."""

from __future__ import annotations

import os

import pytest

from egressguard.keys.provider import (
    AccessDenied,
    KeyAdmin,
    KeyConflict,
    KeyDisabled,
    KeyNotFound,
    KeyProvider,
    KeyRequestError,
    KeyUnavailable,
    ProviderUnreachable,
    UnwrapFailed,
    WrappedKey,
)
from tests.keys.conftest import Harness, unique

pytestmark = pytest.mark.timeout(120)


def test_providers_implement_the_interface(harness: Harness) -> None:
    assert isinstance(harness.provider, KeyProvider)
    assert isinstance(harness.admin, KeyAdmin)


@pytest.mark.parametrize(("kty", "size"), [("RSA", 2048), ("AES", 256)])
def test_wrapped_blob_names_vault_key_and_version_and_unwraps_to_the_data_key(
        harness: Harness, kty: str, size: int) -> None:
    name = unique()
    info = harness.admin.create_key(name, kty, size)
    assert (info.kty, info.size, info.enabled, len(info.versions)) == (kty, size, True, 1)
    data_key = os.urandom(32)
    wrapped = harness.provider.wrap_key(name, data_key)
    assert data_key not in wrapped.ciphertext
    blob = wrapped.to_bytes()
    parsed = WrappedKey.from_bytes(blob)
    assert (parsed.vault_uri, parsed.key, parsed.version) == (
        harness.provider.vault_uri, name, info.latest)
    assert parsed.alg in (("RSA-OAEP-256", "RSA-OAEP") if kty == "RSA" else ("A256KW", "A256KWP"))
    assert harness.provider.unwrap_key(parsed) == data_key
    seen = harness.provider.get_key(name)
    assert seen.versions == info.versions and seen.kid().endswith(f"/{name}/{info.latest}")


def test_rsa_3072_and_4096_keys_wrap_aes_256_data_keys(harness: Harness) -> None:
    if harness.kind == "vault-postgresql":
        pytest.skip("key generation does not depend on the store (vault-sqlite covers it)")
    for size in (3072, 4096):
        name = unique()
        harness.admin.create_key(name, "RSA", size)
        data_key = os.urandom(32)
        wrapped = harness.provider.wrap_key(name, data_key)
        assert len(wrapped.ciphertext) == size // 8
        assert harness.provider.unwrap_key(wrapped) == data_key


def test_rotation_wraps_with_the_new_version_and_old_blobs_still_unwrap(
        harness: Harness) -> None:
    name = unique()
    first = harness.admin.create_key(name, "AES", 256)
    old_key = os.urandom(32)
    old = harness.provider.wrap_key(name, old_key)
    rotated = harness.admin.rotate_key(name)
    assert rotated.versions[0] == first.latest and len(rotated.versions) == 2
    new_key = os.urandom(32)
    new = harness.provider.wrap_key(name, new_key)
    assert (old.version, new.version) == (first.latest, rotated.latest)
    assert harness.provider.unwrap_key(old) == old_key
    assert harness.provider.unwrap_key(new) == new_key
    pinned = harness.provider.wrap_key(name, new_key, version=first.latest)
    assert pinned.version == first.latest
    assert harness.provider.get_key(name).latest == rotated.latest


def test_disabled_key_refuses_wrap_and_unwrap_until_enabled(harness: Harness) -> None:
    name = unique()
    harness.admin.create_key(name, "RSA", 2048)
    data_key = os.urandom(32)
    wrapped = harness.provider.wrap_key(name, data_key)
    harness.admin.set_enabled(name, False)
    assert harness.provider.get_key(name).enabled is False
    with pytest.raises(KeyDisabled) as refused:
        harness.provider.wrap_key(name, data_key)
    assert refused.value.reason == "disabled" and isinstance(refused.value, KeyUnavailable)
    with pytest.raises(KeyDisabled):
        harness.provider.unwrap_key(wrapped)
    harness.admin.set_enabled(name, True)
    assert harness.provider.unwrap_key(wrapped) == data_key


def test_deleted_key_is_unavailable_to_get_wrap_and_unwrap(harness: Harness) -> None:
    name = unique()
    harness.admin.create_key(name, "AES", 256)
    wrapped = harness.provider.wrap_key(name, os.urandom(32))
    harness.admin.delete_key(name)
    for call in (lambda: harness.provider.get_key(name),
                 lambda: harness.provider.wrap_key(name, os.urandom(32)),
                 lambda: harness.provider.unwrap_key(wrapped)):
        with pytest.raises(KeyUnavailable) as gone:
            call()
        assert gone.value.reason in ("deleted", "not found")


def test_identity_without_access_is_denied_get_wrap_and_unwrap(harness: Harness) -> None:
    name = unique()
    harness.admin.create_key(name, "AES", 256)
    wrapped = harness.provider.wrap_key(name, os.urandom(32))
    denied = harness.denied()
    for call in (lambda: denied.get_key(name),
                 lambda: denied.wrap_key(name, os.urandom(32)),
                 lambda: denied.unwrap_key(wrapped)):
        with pytest.raises(AccessDenied) as refused:
            call()
        assert refused.value.reason == "access denied"


def test_unreachable_provider_raises_provider_unreachable(harness: Harness) -> None:
    gone = harness.unreachable()
    with pytest.raises(ProviderUnreachable) as refused:
        gone.get_key("anything")
    assert refused.value.reason == "provider unreachable"


def test_a_blob_from_another_key_or_altered_fails_to_unwrap_and_is_not_unavailable(
        harness: Harness) -> None:
    a, b = unique(), unique()
    harness.admin.create_key(a, "AES", 256)
    harness.admin.create_key(b, "AES", 256)
    wrapped = harness.provider.wrap_key(a, os.urandom(32))
    b_version = harness.provider.get_key(b).latest
    swapped = WrappedKey(wrapped.vault_uri, b, b_version, wrapped.alg, wrapped.ciphertext)
    with pytest.raises(UnwrapFailed):
        harness.provider.unwrap_key(swapped)
    flipped = bytearray(wrapped.ciphertext)
    flipped[5] ^= 1
    with pytest.raises(UnwrapFailed):
        harness.provider.unwrap_key(WrappedKey(wrapped.vault_uri, a, wrapped.version,
                                               wrapped.alg, bytes(flipped)))
    foreign = WrappedKey("vault://elsewhere", a, wrapped.version, wrapped.alg,
                         wrapped.ciphertext)
    with pytest.raises(UnwrapFailed):
        harness.provider.unwrap_key(foreign)


def test_bad_requests_are_refused_with_a_reason(harness: Harness) -> None:
    name = unique()
    harness.admin.create_key(name, "AES", 256)
    with pytest.raises(KeyConflict):
        harness.admin.create_key(name, "AES", 256)
    for kty, size in (("RSA", 1024), ("AES", 128), ("EC", 256)):
        with pytest.raises(KeyRequestError, match="unsupported key"):
            harness.admin.create_key(unique(), kty, size)
    with pytest.raises(KeyRequestError, match="32 bytes"):
        harness.provider.wrap_key(name, os.urandom(16))
    with pytest.raises(KeyNotFound):
        harness.provider.wrap_key(name, os.urandom(32), version="00" * 16)
    with pytest.raises(KeyNotFound):
        harness.provider.get_key(unique("missing"))
    with pytest.raises(KeyRequestError, match="invalid key name"):
        harness.provider.get_key("../etc")
