"""The directory's answers without I/O: secrets, JWTs, certificates, ambiguity."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from egressguard.identity import Directory, JwtConfig, StoredIdentity, TokenError
from egressguard.identity.directory import Authenticated, Refused
from egressguard.identity.secrets import hash_secret, new_secret, verify_secret
from egressguard.policy.model import IdentityMethods


def test_secret_verification_is_exact_and_never_raises() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert verify_secret(secret, stored)
    assert hash_secret(secret) != stored  # salted
    for wrong in (secret[:-1], secret + "x", "", "x" * 10_000):
        assert not verify_secret(wrong, stored)
    for broken in ("", "scrypt$1$2", "md5$a$b$c$d$e", "scrypt$x$8$1$AAAA$AAAA"):
        assert not verify_secret(secret, broken)
    assert not verify_secret(secret, None)  # unknown name: a dummy hash, same work


def test_unknown_name_costs_the_same_as_a_wrong_secret() -> None:
    directory = Directory([StoredIdentity("web", secret_hash=hash_secret(new_secret()))])

    def cost(name: str) -> float:
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            directory.basic(base64.b64encode(f"{name}:egi_wrong".encode()))
            best = min(best, time.perf_counter() - t0)
        return best

    known, unknown = cost("web"), cost("nobody")
    assert 0.5 < known / unknown < 2.0, (known, unknown)


def test_a_claim_two_identities_make_maps_to_neither() -> None:
    stored = [StoredIdentity("a", common_names=("svc",)),
              StoredIdentity("b", common_names=("svc",), spiffe_ids=("spiffe://t/b",))]
    directory = Directory(stored, {"c": IdentityMethods(spiffe_ids=["spiffe://t/c"])})
    assert directory.certificate([], "svc") is None
    assert directory.ambiguous == ["cn 'svc'"]
    assert directory.certificate(["spiffe://t/b"], "svc") == "b"  # SPIFFE first
    assert directory.certificate(["spiffe://t/c"], None) == "c"


def test_the_store_revoking_a_name_binds_the_policy_methods_of_that_name() -> None:
    revoked = StoredIdentity("web", revoked_at=datetime(2026, 1, 1, tzinfo=UTC))
    directory = Directory([revoked], {"web": IdentityMethods(common_names=["web"])})
    assert directory.certificate([], "web") is None and "web" not in directory.names


@pytest.fixture
def es256(tmp_path: Path) -> tuple[JwtConfig, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="only", alg="ES256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return JwtConfig.load(path, "iss", "aud"), key


def test_a_token_with_alg_none_or_hmac_is_refused(es256: tuple[JwtConfig, object]) -> None:
    config, key = es256
    claims = {"iss": "iss", "aud": "aud", "sub": "s", "exp": int(time.time()) + 60}
    directory = Directory([], {"svc": IdentityMethods(jwt_subjects=["s"])}, config)
    good = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "only"})
    assert directory.bearer(good.encode(), time.time()) == Authenticated(
        "svc", float(claims["exp"]))
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "only"})
    hmac = jwt.encode(claims, "secret", algorithm="HS256", headers={"kid": "only"})
    for bad in (unsigned, hmac, "x.y.z", "", "a" * 20_000):
        assert isinstance(directory.bearer(bad.encode(), time.time()), Refused)
    no_exp = jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key,
                        algorithm="ES256", headers={"kid": "only"})
    assert isinstance(directory.bearer(no_exp.encode(), time.time()), Refused)


def test_unusable_jwks_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(TokenError, match=r"jwks\.json: not a usable JWKS file"):
        JwtConfig.load(path, "iss", "aud")
    with pytest.raises(TokenError):
        JwtConfig.load(tmp_path / "missing.json", "iss", "aud")
