"""A PKCS#11 HSM as a key provider (python-pkcs11; SoftHSM2 in the tests).

PKCS#11 is what hardware HSMs and cloud HSM services offer. A key is the set of token
objects labelled with its name; each version is one object (AES) or key pair (RSA) whose
CKA_ID is the version: 8 bytes of creation time then 8 random bytes, so versions sort by
age. Data keys are wrapped inside the HSM with C_WrapKey / C_UnwrapKey: the data key
enters as a session object, RSA keys wrap with CKM_RSA_PKCS_OAEP (SHA-256 where the HSM
takes it, else SHA-1, named in the blob), AES keys with CKM_AES_KEY_WRAP (or _PAD).

"Disabled" is the HSM's own switch: CKA_WRAP / CKA_UNWRAP off on every version, which the
token enforces. Delete destroys the objects (an HSM has no soft delete; use the vault, or
the HSM's own backup, for that). The identity is the token login: a wrong or changed PIN
is `AccessDenied`; a missing library or token is `ProviderUnreachable`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from egressguard.keys.provider import (
    AccessDenied,
    KeyConflict,
    KeyDisabled,
    KeyInfo,
    KeyNotFound,
    KeyProviderError,
    KeyRequestError,
    ProviderUnreachable,
    UnwrapFailed,
    WrappedKey,
    check_data_key,
    check_key_name,
    check_key_spec,
)

_OAEP = {"RSA-OAEP-256": (Mechanism.SHA256, MGF.SHA256, None),
         "RSA-OAEP": (Mechanism.SHA_1, MGF.SHA1, None)}
_AES = {"A256KW": Mechanism.AES_KEY_WRAP, "A256KWP": Mechanism.AES_KEY_WRAP_PAD}
_DENIED = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinExpired, p11.PinLocked,
           p11.UserNotLoggedIn, p11.UserPinNotInitialized)
_GONE = (p11.NoSuchToken, p11.TokenNotPresent, p11.TokenNotRecognised, p11.DeviceRemoved,
         p11.DeviceError, p11.SlotIDInvalid, p11.SessionHandleInvalid, p11.SessionClosed)
_BAD_BLOB = (p11.GeneralError, p11.EncryptedDataInvalid, p11.EncryptedDataLenRange,
             p11.WrappedKeyInvalid, p11.WrappedKeyLenRange, p11.DataInvalid,
             p11.DataLenRange)
_SESSION_DATA_KEY = {Attribute.TOKEN: False, Attribute.SENSITIVE: False,
                     Attribute.EXTRACTABLE: True}


class _Login:
    """One logged-in session to a token, shared by the providers of this process."""

    def __init__(self, pin_digest: bytes, session: Any) -> None:
        self.pin_digest = pin_digest
        self.session: Any = session
        self.lock = threading.Lock()
        self.users = 0


_LOGINS: dict[tuple[str, str], _Login] = {}
_LOGINS_LOCK = threading.Lock()


def new_version() -> bytes:
    return time.time_ns().to_bytes(8, "big") + os.urandom(8)


class Pkcs11Provider:
    """Keys on one PKCS#11 token, used after logging in with `pin`."""

    def __init__(self, library: str, token_label: str, pin: str) -> None:
        self.library = library
        self.token_label = token_label
        self.vault_uri = f"pkcs11:token={token_label}"
        self._pin = pin
        self._login: _Login | None = None
        self._rsa_alg: str | None = None  # the OAEP variant this HSM takes, learned once

    # -- sessions and errors ----------------------------------------------------------

    def _open(self) -> Any:
        try:
            lib = pkcs11.lib(self.library)
        except p11.PKCS11Error as exc:
            raise ProviderUnreachable(f"{self.vault_uri}: cannot load {self.library}: "
                                      f"{exc}") from None
        try:
            token = lib.get_token(token_label=self.token_label)
            return token.open(user_pin=self._pin, rw=True)
        except _DENIED:
            raise AccessDenied(f"{self.vault_uri}: login refused (wrong PIN)") from None
        except (*_GONE, p11.MultipleTokensReturned) as exc:
            raise ProviderUnreachable(f"{self.vault_uri}: token unavailable "
                                      f"({type(exc).__name__})") from None

    def _attach(self) -> _Login:
        """The process's login to this token. PKCS#11 logs in an application, not a
        session: a second provider with another PIN would ride on the first one's login,
        so it is refused here rather than let in."""
        digest = hashlib.sha256(self._pin.encode()).digest()
        where = (self.library, self.token_label)
        with _LOGINS_LOCK:
            login = _LOGINS.get(where)
            if login is None:
                login = _LOGINS[where] = _Login(digest, self._open())
            elif not hmac.compare_digest(login.pin_digest, digest):
                raise AccessDenied(f"{self.vault_uri}: login refused (wrong PIN)")
            login.users += 1
            return login

    @contextmanager
    def _call(self) -> Iterator[Any]:
        """The logged-in session, under its lock; device errors drop it and map to
        `ProviderUnreachable`, refused logins to `AccessDenied`."""
        if self._login is None or self._login.session is None:
            self.close()
            self._login = self._attach()
        login = self._login
        with login.lock:
            try:
                yield login.session
            except KeyProviderError:
                raise
            except _DENIED:
                self.close()
                raise AccessDenied(f"{self.vault_uri}: not logged in") from None
            except _GONE as exc:
                login.session = None
                self.close()
                raise ProviderUnreachable(f"{self.vault_uri}: {type(exc).__name__}") from None
            except p11.PKCS11Error as exc:
                if "0x68" in str(exc):  # CKR_KEY_FUNCTION_NOT_PERMITTED: disabled
                    raise KeyDisabled(f"{self.vault_uri}: key function not permitted") from None
                raise KeyProviderError(f"{self.vault_uri}: {type(exc).__name__} {exc}") from None

    def close(self) -> None:
        """Release this provider's share of the login (the last one logs out)."""
        login, self._login = self._login, None
        if login is None:
            return
        with _LOGINS_LOCK:
            login.users -= 1
            if login.users > 0 and login.session is not None:
                return
            if _LOGINS.get((self.library, self.token_label)) is login:
                del _LOGINS[(self.library, self.token_label)]
        session, login.session = login.session, None
        if session is not None:
            with suppress(p11.PKCS11Error):
                session.close()

    # -- reading keys -----------------------------------------------------------------

    @staticmethod
    def _objects(session: Any, name: str) -> dict[bytes, dict[str, Any]]:
        """version id -> {"public"|"private"|"secret": object}."""
        check_key_name(name)
        found: dict[bytes, dict[str, Any]] = {}
        for obj in session.get_objects({Attribute.LABEL: name, Attribute.TOKEN: True}):
            cls = obj.object_class
            role = {ObjectClass.PUBLIC_KEY: "public", ObjectClass.PRIVATE_KEY: "private",
                    ObjectClass.SECRET_KEY: "secret"}.get(cls)
            if role:
                found.setdefault(bytes(obj[Attribute.ID]), {})[role] = obj
        return found

    def _need(self, session: Any, name: str) -> dict[bytes, dict[str, Any]]:
        found = self._objects(session, name)
        if not found:
            raise KeyNotFound(f"key {name!r} not found on {self.vault_uri}", name)
        return dict(sorted(found.items()))

    def _info(self, name: str, found: dict[bytes, dict[str, Any]]) -> KeyInfo:
        latest = found[max(found)]
        if "secret" in latest:
            kty, size = "AES", int(latest["secret"][Attribute.VALUE_LEN]) * 8
            enabled = bool(latest["secret"][Attribute.WRAP])
        elif "public" in latest:
            kty, size = "RSA", int(latest["public"][Attribute.MODULUS_BITS])
            enabled = bool(latest["public"][Attribute.WRAP])
        else:  # a private key whose public half was removed: it can still unwrap
            kty, size = "RSA", len(latest["private"][Attribute.MODULUS]) * 8
            enabled = bool(latest["private"][Attribute.UNWRAP])
        return KeyInfo(self.vault_uri, name, kty, size, tuple(v.hex() for v in found),
                       enabled, None, {"hsm": True})

    def get_key(self, name: str) -> KeyInfo:
        with self._call() as session:
            return self._info(name, self._need(session, name))

    def _version(self, name: str, found: dict[bytes, dict[str, Any]],
                 version: str | None) -> tuple[bytes, dict[str, Any]]:
        if version is None:
            vid = max(found)
        else:
            try:
                vid = bytes.fromhex(version)
            except ValueError:
                vid = b""
            if vid not in found:
                raise KeyNotFound(f"key {name!r} has no version {version!r}", name, version)
        return vid, found[vid]

    # -- the data plane ---------------------------------------------------------------

    def wrap_key(self, name: str, data_key: bytes, version: str | None = None) -> WrappedKey:
        check_data_key(data_key)
        with self._call() as session:
            vid, objs = self._version(name, self._need(session, name), version)
            kek = objs.get("secret") or objs.get("public")
            if kek is None:
                raise KeyNotFound(f"key {name!r} version {vid.hex()} has no wrapping key",
                                  name, vid.hex())
            if not kek[Attribute.WRAP]:
                raise KeyDisabled(f"key {name!r} is disabled", name, vid.hex())
            temp = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: data_key, **_SESSION_DATA_KEY})
            try:
                alg, blob = (self._wrap_aes(kek, temp) if "secret" in objs
                             else self._wrap_rsa(kek, temp))
            finally:
                temp.destroy()
            return WrappedKey(self.vault_uri, name, vid.hex(), alg, bytes(blob))

    def _wrap_aes(self, kek: Any, temp: Any) -> tuple[str, bytes]:
        for alg, mechanism in _AES.items():
            try:
                return alg, kek.wrap_key(temp, mechanism=mechanism)
            except p11.MechanismInvalid:
                continue
        raise KeyRequestError(f"{self.vault_uri} offers no AES key wrap mechanism")

    def _wrap_rsa(self, kek: Any, temp: Any) -> tuple[str, bytes]:
        order = [self._rsa_alg] if self._rsa_alg else list(_OAEP)
        for alg in order:
            try:
                blob = kek.wrap_key(temp, mechanism=Mechanism.RSA_PKCS_OAEP,
                                    mechanism_param=_OAEP[alg])
            except (p11.ArgumentsBad, p11.MechanismParamInvalid):
                continue
            self._rsa_alg = alg
            return alg, blob
        raise KeyRequestError(f"{self.vault_uri} refuses RSA-OAEP wrapping")

    def unwrap_key(self, wrapped: WrappedKey) -> bytes:
        if wrapped.vault_uri != self.vault_uri:
            raise UnwrapFailed(f"{wrapped.kid} was wrapped by {wrapped.vault_uri}, "
                               f"not {self.vault_uri}")
        with self._call() as session:
            _vid, objs = self._version(wrapped.key, self._need(session, wrapped.key),
                                      wrapped.version)
            kek = objs.get("secret") or objs.get("private")
            if kek is None:
                raise KeyNotFound(f"{wrapped.kid}: no unwrapping key", wrapped.key)
            if not kek[Attribute.UNWRAP]:
                raise KeyDisabled(f"key {wrapped.key!r} is disabled", wrapped.key,
                                  wrapped.version)
            if "secret" in objs:
                if wrapped.alg not in _AES:
                    raise UnwrapFailed(f"{wrapped.kid}: {wrapped.alg} is not an AES key wrap")
                kwargs: dict[str, Any] = {"mechanism": _AES[wrapped.alg]}
            else:
                if wrapped.alg not in _OAEP:
                    raise UnwrapFailed(f"{wrapped.kid}: {wrapped.alg} is not RSA-OAEP")
                kwargs = {"mechanism": Mechanism.RSA_PKCS_OAEP,
                          "mechanism_param": _OAEP[wrapped.alg]}
            try:
                temp = kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES,
                                      wrapped.ciphertext, store=False,
                                      template=_SESSION_DATA_KEY, **kwargs)
            except (*_BAD_BLOB, p11.ArgumentsBad, p11.TemplateInconsistent):
                raise UnwrapFailed(f"{wrapped.kid} did not wrap this data key "
                                   "(another key, or altered)") from None
            try:
                data_key = bytes(temp[Attribute.VALUE])
            finally:
                temp.destroy()
        check_data_key(data_key)
        return data_key

    # -- the management plane ---------------------------------------------------------

    def _generate(self, session: Any, name: str, kty: str, size: int) -> None:
        vid = new_version()
        if kty == "AES":
            session.generate_key(KeyType.AES, 256, store=True, label=name, id=vid, template={
                Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False})
            return
        session.generate_keypair(
            KeyType.RSA, size, store=True, label=name, id=vid,
            public_template={Attribute.WRAP: True, Attribute.ENCRYPT: False,
                             Attribute.VERIFY: False},
            private_template={Attribute.UNWRAP: True, Attribute.DECRYPT: False,
                              Attribute.SIGN: False, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False})

    def create_key(self, name: str, kty: str = "RSA", size: int = 2048) -> KeyInfo:
        check_key_spec(kty, size)
        with self._call() as session:
            if self._objects(session, name):
                raise KeyConflict(f"key {name!r} exists on {self.vault_uri}")
            self._generate(session, name, kty, size)
            return self._info(name, self._need(session, name))

    def rotate_key(self, name: str) -> KeyInfo:
        with self._call() as session:
            info = self._info(name, self._need(session, name))
            self._generate(session, name, info.kty, info.size)
            found = self._need(session, name)
            if not info.enabled:  # a new version of a disabled key starts disabled
                self._switch(found, False)
            return self._info(name, found)

    @staticmethod
    def _switch(found: dict[bytes, dict[str, Any]], enabled: bool) -> None:
        for objs in found.values():
            for role, attr in (("public", Attribute.WRAP), ("private", Attribute.UNWRAP),
                               ("secret", Attribute.WRAP), ("secret", Attribute.UNWRAP)):
                if role in objs:
                    objs[role][attr] = enabled

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        with self._call() as session:
            found = self._need(session, name)
            self._switch(found, enabled)
            return self._info(name, self._need(session, name))

    def delete_key(self, name: str) -> None:
        """Destroy every version (irreversible on the token)."""
        with self._call() as session:
            for objs in self._need(session, name).values():
                for obj in objs.values():
                    obj.destroy()

