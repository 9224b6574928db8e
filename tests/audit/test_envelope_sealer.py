"""Audit batches sealed under customer-managed keys (`audit.crypto.EnvelopeSealer`) with
the built-in vault on SQLite and PostgreSQL: rotation keeps old and new batches readable
and verifiable, a missing key is "cannot decrypt", not "tampered", batches written under
the local audit key still open, and two gateways read each other's batches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from egressguard.audit.crypto import EnvelopeSealer, Sealer, associated
from egressguard.keys.envelope import Envelope, Tampered
from egressguard.keys.provider import WrappedKey
from egressguard.keys.vault import KeyVault
from tests.keys.conftest import audit_vault, unique

pytestmark = pytest.mark.timeout(60)
CLEAR = (1700000000.0, "default", "request", "http", "example.com", 443, "", "tcp", "",
         "allow", True, "name", "r1", "3", "c1", 10, 20, 0.5, "")
SECRET = ("10.0.0.7", "alice", "GET", "/blob?sig=SECRET", "allowed by r1")


def seal_batch(sealer: EnvelopeSealer, n: int) -> tuple[bytes, list[bytes]]:
    """What the audit writer's batch loop does: one header, inline AES-GCM per record."""
    header, encrypt = sealer.batch(n)
    plain = b"0" + "\0".join(SECRET).encode()
    aad = associated(CLEAR)
    payloads = []
    for _ in range(n):
        nonce = os.urandom(12)
        payloads.append(nonce + encrypt(nonce, plain, aad))
    return header, payloads


@pytest.fixture
def vault(store_url: str) -> Iterator[KeyVault]:
    v = audit_vault(store_url, unique("cmk"))
    yield v
    v.close()


@pytest.fixture
def envelope(vault: KeyVault) -> Iterator[Envelope]:
    env = Envelope(vault.client("gateway"), "audit", check_interval=60).start()
    yield env
    env.stop()


def test_after_rotation_old_and_new_batches_open_and_verify(
        vault: KeyVault, envelope: Envelope) -> None:
    sealer = EnvelopeSealer(envelope)
    old_header, old = seal_batch(sealer, 3)
    old_mac = sealer.chain(old_header, b"\0" * 32, "w1", 1, old)
    newer = vault.rotate_key("audit").latest
    envelope.check()  # an unset keyVersion follows the latest on the next check
    new_header, new = seal_batch(sealer, 2)
    assert WrappedKey.from_bytes(new_header).version == newer
    assert WrappedKey.from_bytes(old_header).version != newer
    new_mac = sealer.chain(new_header, old_mac, "w1", 2, new)
    for header, payloads in ((old_header, old), (new_header, new)):
        for payload in payloads:
            assert sealer.open(header, payload, associated(CLEAR))["path"] == SECRET[3]
            assert sealer.verdict(header, payload, associated(CLEAR)) == "ok"
    assert sealer.chain(old_header, b"\0" * 32, "w1", 1, old) == old_mac
    assert sealer.chain(new_header, old_mac, "w1", 2, new) == new_mac
    # The header is bound into the chain: a batch cannot be re-labelled.
    assert sealer.chain(old_header, old_mac, "w1", 2, new) != new_mac


def test_a_key_the_reader_cannot_unwrap_is_cannot_decrypt_not_tampered(
        vault: KeyVault, envelope: Envelope) -> None:
    header, payloads = seal_batch(EnvelopeSealer(envelope), 1)
    vault.grant("auditor", "get,wrapKey")  # no unwrapKey
    reader_env = Envelope(vault.client("auditor"), "audit", check_interval=60)
    reader_env.check()
    reader = EnvelopeSealer(reader_env)
    kid = WrappedKey.from_bytes(header).kid
    said = reader.verdict(header, payloads[0], associated(CLEAR))
    assert said.startswith(f"cannot decrypt: key {kid}") and "tampered" not in said
    # The writer's own identity losing its grant reads the same way, not as tampering.
    vault.revoke("gateway", "unwrapKey")
    fresh = EnvelopeSealer(Envelope(vault.client("gateway"), "audit", check_interval=60))
    assert fresh.verdict(header, payloads[0], associated(CLEAR)).startswith(
        "cannot decrypt")


def test_an_altered_record_or_clear_column_is_tampered(envelope: Envelope) -> None:
    sealer = EnvelopeSealer(envelope)
    header, payloads = seal_batch(sealer, 1)
    flipped = payloads[0][:-1] + bytes([payloads[0][-1] ^ 1])
    assert sealer.verdict(header, flipped, associated(CLEAR)) == "tampered"
    edited = associated((*CLEAR[:9], "deny", *CLEAR[10:]))
    assert sealer.verdict(header, payloads[0], edited) == "tampered"
    with pytest.raises(Tampered):  # a header that is no wrapped key at all
        sealer.open(b"XXXX" + header[4:], payloads[0], associated(CLEAR))


def test_batches_without_a_header_still_open_under_the_local_audit_key(
        envelope: Envelope) -> None:
    legacy = Sealer(bytes(32))
    nonce = os.urandom(12)
    payload = nonce + legacy.encrypt(nonce, b"0" + "\0".join(SECRET).encode(),
                                     associated(CLEAR))
    sealer = EnvelopeSealer(envelope, legacy)
    assert sealer.open(None, payload, associated(CLEAR))["client_identity"] == "alice"
    assert sealer.chain(None, b"p", "w", 1, [payload]) == legacy.chain(b"p", "w", 1,
                                                                        [payload])
    other = EnvelopeSealer(envelope, Sealer(bytes([1]) * 32))
    assert other.verdict(None, payload, associated(CLEAR)) == "tampered"


def test_two_gateways_on_one_store_read_each_others_batches(
        vault: KeyVault, envelope: Envelope) -> None:
    other_env = Envelope(vault.client("gateway"), "audit", check_interval=60)
    other_env.check()
    mine, theirs = EnvelopeSealer(envelope), EnvelopeSealer(other_env)
    h1, p1 = seal_batch(mine, 2)
    h2, p2 = seal_batch(theirs, 2)
    assert theirs.chain(h1, b"", "a", 1, p1) == mine.chain(h1, b"", "a", 1, p1)
    assert mine.verdict(h2, p2[1], associated(CLEAR)) == "ok"
    assert theirs.verdict(h1, p1[0], associated(CLEAR)) == "ok"
