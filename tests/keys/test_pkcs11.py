"""What is particular to the PKCS#11 provider on a real SoftHSM2 token: the login is the
identity, keys never leave the token, and disable is the token's own switch."""

from __future__ import annotations

import os

import pytest
from pkcs11 import Attribute
from pkcs11 import exceptions as p11

from egressguard.keys.pkcs11 import Pkcs11Provider
from egressguard.keys.provider import AccessDenied, KeyDisabled
from tests.keys.conftest import SoftHsm, unique

pytestmark = pytest.mark.timeout(60)


def test_a_wrong_pin_is_refused_even_while_the_process_is_logged_in(softhsm: SoftHsm) -> None:
    good = Pkcs11Provider(softhsm.library, softhsm.token, softhsm.pin)
    name = unique()
    good.create_key(name, "AES", 256)
    intruder = Pkcs11Provider(softhsm.library, softhsm.token, "9999")
    with pytest.raises(AccessDenied):  # PKCS#11 would let it ride on the open login
        intruder.get_key(name)
    good.close()
    with pytest.raises(AccessDenied):  # and with no login open, the token refuses it
        intruder.get_key(name)
    again = Pkcs11Provider(softhsm.library, softhsm.token, softhsm.pin)
    assert again.get_key(name).name == name
    again.close()


def test_key_material_stays_on_the_token(softhsm: SoftHsm) -> None:
    hsm = Pkcs11Provider(softhsm.library, softhsm.token, softhsm.pin)
    rsa, aes = unique(), unique()
    hsm.create_key(rsa, "RSA", 2048)
    hsm.create_key(aes, "AES", 256)
    with hsm._call() as session:
        for obj in session.get_objects({Attribute.LABEL: rsa}):
            if obj.object_class.name == "PRIVATE_KEY":
                assert obj[Attribute.SENSITIVE] and not obj[Attribute.EXTRACTABLE]
                with pytest.raises(p11.AttributeSensitive):
                    obj[Attribute.PRIVATE_EXPONENT]
        (secret,) = session.get_objects({Attribute.LABEL: aes})
        assert secret[Attribute.SENSITIVE] and not secret[Attribute.EXTRACTABLE]
        with pytest.raises(p11.AttributeSensitive):
            secret[Attribute.VALUE]
    # The data keys that passed through were session objects, destroyed after use.
    data_key = os.urandom(32)
    wrapped = hsm.wrap_key(aes, data_key)
    assert hsm.unwrap_key(wrapped) == data_key
    with hsm._call() as session:
        assert list(session.get_objects({Attribute.TOKEN: False})) == []
    hsm.close()


def test_a_new_version_of_a_disabled_key_starts_disabled(softhsm: SoftHsm) -> None:
    hsm = Pkcs11Provider(softhsm.library, softhsm.token, softhsm.pin)
    name = unique()
    hsm.create_key(name, "AES", 256)
    hsm.set_enabled(name, False)
    rotated = hsm.rotate_key(name)
    assert len(rotated.versions) == 2 and rotated.enabled is False
    with pytest.raises(KeyDisabled):
        hsm.wrap_key(name, os.urandom(32))
    hsm.set_enabled(name, True)
    assert hsm.wrap_key(name, os.urandom(32)).version == rotated.latest
    hsm.close()
