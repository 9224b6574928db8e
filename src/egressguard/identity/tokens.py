"""Signed workload tokens (e.g. Kubernetes projected service-account tokens), verified
offline with PyJWT against a JWKS the operator configured: no network call per token.

A token is accepted only when its header names a key of the JWKS (`kid`; a JWKS of one
key may omit it), its signature verifies with that key's own algorithm (never one the
token asks for: `alg: none` and HMAC-with-the-public-key confusions are impossible), and
`exp`, `iss`, `aud` and `sub` are present and right. The subject is what maps to an
identity. Pure: the JWKS is read once by `JwtConfig.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jwt

from egressguard.errors import InputError

MAX_TOKEN = 16384   # bytes; a longer Bearer credential is refused unparsed
MAX_JWKS = 1024 * 1024


class TokenError(InputError, ValueError):
    """A JWT configuration that cannot be used (unreadable or invalid JWKS file)."""


@dataclass(frozen=True)
class JwtConfig:
    """Where tokens come from and whom they are for, with the issuer's public keys."""

    issuer: str
    audience: str
    keys: dict[str, jwt.PyJWK]
    leeway: float = 0.0

    @classmethod
    def load(cls, jwks_file: Path, issuer: str, audience: str,
             leeway: float = 0.0) -> JwtConfig:
        """Read a JWKS file (`{"keys": [...]}`); raises TokenError with the file and the
        reason."""
        try:
            text = jwks_file.read_bytes()[:MAX_JWKS + 1]
            if len(text) > MAX_JWKS:
                raise ValueError(f"larger than {MAX_JWKS} bytes")
            document = json.loads(text)
            found = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise TokenError(f"{jwks_file}: not a usable JWKS file: {exc}",
                             hint="a JSON object with a \"keys\" list, e.g. the issuer's "
                                  "/openid/v1/jwks") from None
        keys = {key.key_id or "": key for key in found.keys}
        if not issuer or not audience:
            raise TokenError("a JWT issuer and audience are both required")
        return cls(issuer=issuer, audience=audience, keys=keys, leeway=leeway)

    @classmethod
    def from_options(cls, jwks: Path | str | None, issuer: str | None,
                     audience: str | None) -> JwtConfig | None:
        """`serve`'s --jwt-jwks/--jwt-issuer/--jwt-audience (in its workers too): None
        when none is given, ValueError when only some are."""
        if jwks is None and issuer is None and audience is None:
            return None
        if jwks is None or not issuer or not audience:
            raise ValueError("--jwt-jwks, --jwt-issuer and --jwt-audience go together")
        return cls.load(Path(jwks), issuer, audience)

    def subject(self, token: str, now: float) -> tuple[str, float] | None:
        """The verified token's (`sub`, `exp`), or None (expired, wrong issuer or audience, unknown
        key, bad signature, malformed). Never raises."""
        if len(token) > MAX_TOKEN:
            return None
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            key = self.keys.get(kid) if kid is not None else (
                next(iter(self.keys.values())) if len(self.keys) == 1 else None)
            if key is None or not key.algorithm_name:
                return None
            claims = jwt.decode(
                token, key.key, algorithms=[key.algorithm_name], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": False})
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None
        # PyJWT checks `exp` against its own clock; check it against ours too (the
        # caller's `now`), so that a test or a frozen clock cannot widen the window.
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now >= exp + self.leeway:
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 512:
            return None
        return sub, float(exp)
