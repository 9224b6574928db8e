"""Proxy secrets: issued once, stored only as a salted scrypt hash, compared in constant
time.

A secret is 256 random bits, so a slow hash adds nothing against guessing; scrypt is used
so that a stolen table is useless even for a weak secret an operator might paste in, at
a cost (N=2**12, ~5 ms) small enough that verifying is not a lever for a CPU flood
(verified credentials are remembered per directory, see `directory`). An unknown name is
checked against a dummy hash of the same cost, so the answer and its timing are the same
for an unknown name and a wrong secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "egi_"
MAX_SECRET = 512  # longer secrets are refused without hashing them
_N, _R, _P, _LEN = 2 ** 12, 8, 1, 32
_SCHEME = "scrypt"


def new_secret() -> str:
    """A fresh proxy secret (printed once, never stored in clear)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _derive(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r,
                          p=p, dklen=_LEN, maxmem=64 * 1024 * 1024)


def hash_secret(secret: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): what the store keeps."""
    salt = secrets.token_bytes(16)
    digest = _derive(secret, salt, _N, _R, _P)
    return "$".join((_SCHEME, str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


_DUMMY = hash_secret(secrets.token_urlsafe(32))


def verify_secret(secret: str, stored: str | None) -> bool:
    """Whether `secret` matches `stored` (None: an unknown name, checked against a dummy
    hash all the same). Never raises: a malformed stored hash does not match."""
    if len(secret) > MAX_SECRET:
        return False
    target = stored or _DUMMY
    try:
        scheme, n, r, p, salt, digest = target.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest)
        got = _derive(secret, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected) and stored is not None
