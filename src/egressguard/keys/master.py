"""The built-in vault's master key: `$EGRESSGUARD_MASTER_KEY` (base64 of 32 bytes) or
`<data home>/master.key` (created 0600 on first use).

Every gateway of a fleet that shares one store must be given the same master key (the
environment variable, or a copy of the file); the key material in the store is useless
without it. A key file that others can read is refused rather than trusted.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from egressguard.keys.provider import KeyProviderError

MASTER_ENV = "EGRESSGUARD_MASTER_KEY"
MASTER_FILE = "master.key"


class MasterKeyError(KeyProviderError):
    """The master key is missing, malformed or too widely readable."""


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise MasterKeyError(f"{where} is not base64") from None
    if len(key) != 32:
        raise MasterKeyError(f"{where} must decode to 32 bytes, got {len(key)}")
    return key


def load_master_key(path: Path | None = None, *, create: bool = True) -> bytes:
    """The master key from the environment, else from the key file (made if `create`)."""
    env = os.environ.get(MASTER_ENV)
    if env:
        return _decode(env, MASTER_ENV)
    if path is None:
        from egressguard.paths import data_home
        path = data_home() / MASTER_FILE
    if not path.exists():
        if not create:
            raise MasterKeyError(f"no master key: set {MASTER_ENV} or create {path}")
        _create(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"{path} is readable by others (mode {oct(mode & 0o777)}); "
                             "chmod 600 it")
    return _decode(path.read_text("ascii", errors="replace"), str(path))


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created concurrently: use that one
        return
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
