"""The last-known-good policy, kept encrypted in the data home so that a gateway can start
(and enforce what it last enforced) while the store is down.

One file per (store, cluster) under `data_home()/policy-cache/`, mode 0600, written
atomically by the feed on every new version in force. The content is AES-GCM under a key
derived (HKDF) from the audit master key, with the store and cluster as associated data:
a file copied from another cluster or store, altered, or sealed under another key does not
open, and is then ignored (the gateway fails closed: no store and no cache, no start).

When the cluster names a customer-managed key (issue 13) the file is instead an envelope
blob under that key (`CMK` + blob: the wrapped data key names vault, key and version) and
never under the local key: a cold start that cannot reach the key (with the built-in
vault: the store is down) serves nothing rather than decrypting it with a local key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from egressguard.errors import EgressguardError
from egressguard.policy import PolicyError
from egressguard.policy.load import load_policy_text
from egressguard.store import Version
from egressguard.store.sealing import FieldSealer

_log = logging.getLogger("egressguard.fleet")
NONCE = 12
MAX_BYTES = 16 * 1024 * 1024  # a cache file larger than this is not read
CMK = b"egressguard-policy-cache:cmk:v1\n"  # then the envelope blob of the cluster's key


class PolicyCache:
    """Seal and open the last-known-good version of `cluster` of the store `store_key`
    (`Store.key`: the URL without its password)."""

    def __init__(self, store_key: str, cluster: str, *, master: bytes | None = None,
                 folder: Path | None = None,
                 sealer: Callable[[], FieldSealer | None] | None = None) -> None:
        """`sealer`: the cluster's customer-managed key now (None: it names none), asked
        at each save and load; None when no key can be reached (a cold start)."""
        if master is None:
            from egressguard.audit.crypto import load_or_create_key
            master = load_or_create_key()
        if folder is None:
            from egressguard.paths import data_home
            folder = data_home() / "policy-cache"
        self._aead = AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                 info=b"egressguard policy cache v1").derive(master))
        self._aad = json.dumps([store_key, cluster]).encode()
        self.cluster = cluster
        self._sealer = sealer
        name = hashlib.sha256(self._aad).hexdigest()[:32]
        self.path = folder / f"{name}.bin"

    def save(self, version: Version) -> None:
        """Write `version` (atomically, 0600); a failure is logged, never raised: the
        gateway goes on enforcing, only the next cold start lacks this version."""
        plain = json.dumps({"cluster": version.cluster, "number": version.number,
                            "text": version.text, "principal": version.principal,
                            "created_at": version.created_at.isoformat(),
                            "summary": version.summary}).encode()
        try:
            key = self._sealer() if self._sealer is not None else None
            if key is not None:
                sealed = CMK + key.seal(plain, self._aad)
            else:
                nonce = os.urandom(NONCE)
                sealed = nonce + self._aead.encrypt(nonce, plain, self._aad)
        except EgressguardError as exc:  # the key is unavailable: no copy, never clear
            _log.warning("policy cache %s not written (%s)", self.path, exc)
            self.wipe()
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, sealed)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            _log.warning("cannot write the policy cache %s: %s", self.path, exc)

    def wipe(self) -> None:
        """Remove the cached version (the cluster's key was revoked: a decrypted copy of
        its policy must not outlive the access; the next version in force saves again)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            _log.warning("policy cache %s removed (the cluster is suspended)", self.path)

    def load(self) -> Version | None:
        """The cached version, or None when there is none or it does not open."""
        try:
            with self.path.open("rb") as fh:
                sealed = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("cannot read the policy cache %s: %s", self.path, exc)
            return None
        try:
            if len(sealed) > MAX_BYTES:
                raise ValueError("too large")
            if sealed.startswith(CMK):
                plain = self._open_cmk(sealed[len(CMK):])
                if plain is None:
                    return None
            else:
                plain = self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], self._aad)
            data = json.loads(plain)
            return Version(cluster=str(data["cluster"]), number=int(data["number"]),
                           policy=load_policy_text(data["text"], f"cache {self.path}"),
                           text=str(data["text"]), principal=str(data["principal"]),
                           created_at=datetime.fromisoformat(data["created_at"]),
                           summary=str(data["summary"]))
        except (InvalidTag, ValueError, KeyError, TypeError, PolicyError) as exc:
            _log.warning("ignoring the policy cache %s: it does not open (%s)", self.path,
                         type(exc).__name__)
            return None

    def _open_cmk(self, blob: bytes) -> bytes | None:
        """A cache sealed under the cluster's key, or None (logged: fail closed) when
        that key cannot be reached or does not open it."""
        from egressguard.keys.envelope import split_blob
        from egressguard.keys.provider import WrappedKey

        try:
            kid = WrappedKey.from_bytes(split_blob(blob)[0]).kid
        except (EgressguardError, ValueError):
            kid = "(unreadable key header)"
        key = self._sealer() if self._sealer is not None else None
        if key is None:
            _log.error("policy cache %s of cluster %s is sealed under its customer-managed "
                       "key %s, which cannot be reached now: not enforcing it (fail "
                       "closed: nothing is served until the store and key are back)",
                       self.path, self.cluster, kid)
            return None
        try:
            return key.open(blob, self._aad)
        except EgressguardError as exc:
            _log.error("policy cache %s of cluster %s does not open under key %s (%s): "
                       "not enforcing it", self.path, self.cluster, kid, exc)
            return None
