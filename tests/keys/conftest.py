"""Key providers under test: the built-in vault (SQLite and PostgreSQL) and a real SoftHSM2
token through PKCS#11, behind one harness so that one contract suite runs on each.

SoftHSM2 reads `SOFTHSM2_CONF` once per process (at C_Initialize), so one private token
directory and one token serve the whole session; tests use unique key names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from egressguard.keys.vault import KeyVault, VaultClient
from tests.conftest import PG_ADMIN

SOFTHSM_LIBS = ("/usr/lib/softhsm/libsofthsm2.so",
                "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN = "egressguard-test"
PIN = "5678"
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
MASTER = bytes(range(32))


@dataclass
class Harness:
    """One provider as the contract sees it."""

    kind: str
    provider: Any  # KeyProvider, acting as an identity with get/wrapKey/unwrapKey
    admin: Any  # KeyAdmin
    denied: Callable[[], Any]  # a provider whose identity has no access
    unreachable: Callable[[], Any]  # a provider that cannot reach its keys


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def audit_vault(url: str, name: str | None = None) -> KeyVault:
    """A built-in vault in `url` holding the RSA-2048 key `audit`, which the identity
    `gateway` may get, wrap and unwrap with (what a cluster's key needs)."""
    vault = KeyVault(url, name or unique("cmk"), master_key=MASTER)
    vault.create_key("audit", "RSA", 2048)
    vault.grant("gateway", "get,wrapKey,unwrapKey")
    return vault


def point_cluster(engine: Any, url: str, vault_name: str, cluster: str = "default",
                  principal: str = "t") -> None:
    """Set `cluster`'s keyVaultProperties to the `audit` key of `vault_name`, used as
    the identity `gateway`."""
    from egressguard.keys import clusterkeys

    clusterkeys.put(engine, url, MASTER, cluster,
                    {"keyName": "audit", "keyVaultUri": f"vault://{vault_name}",
                     "userIdentity": "gateway"}, principal)


@dataclass(frozen=True)
class SoftHsm:
    library: str
    token: str
    pin: str


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    library = next((p for p in SOFTHSM_LIBS if Path(p).is_file()), None)
    if library is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (.ci/run installs the softhsm2 package)")
    home = tmp_path_factory.mktemp("softhsm")
    (home / "tokens").mkdir()
    conf = home / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {home / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
                    "--so-pin", "12345678", "--pin", PIN], check=True, capture_output=True,
                   timeout=60)
    return SoftHsm(library, TOKEN, PIN)


def _vault_harness(url: str, kind: str) -> Iterator[Harness]:
    vault = KeyVault(url, "contract", master_key=MASTER, purge_protection=False)
    vault.grant("gateway", "get,wrapKey,unwrapKey")
    client = vault.client("gateway")
    yield Harness(kind, client, vault, lambda: vault.client("stranger"),
                  lambda: VaultClient.connect(UNREACHABLE_PG, "contract", MASTER, "gateway"))
    vault.close()


def _hsm_harness(hsm: SoftHsm) -> Iterator[Harness]:
    from egressguard.keys.pkcs11 import Pkcs11Provider

    provider = Pkcs11Provider(hsm.library, hsm.token, hsm.pin)
    admin = Pkcs11Provider(hsm.library, hsm.token, hsm.pin)
    yield Harness("pkcs11", provider, admin,
                  lambda: Pkcs11Provider(hsm.library, hsm.token, "0000"),
                  lambda: Pkcs11Provider(hsm.library, "no-such-token", hsm.pin))
    provider.close()
    admin.close()


@pytest.fixture(scope="session")
def shared_pg_url(pg_available: bool) -> Iterator[str]:
    """One PostgreSQL database for the whole contract run (keys are uniquely named):
    creating and dropping one per test would cost seconds each."""
    if not pg_available:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    name = f"egtest_keys_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["vault-sqlite", "vault-postgresql", "pkcs11"])
def harness(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if request.param == "pkcs11":
        yield from _hsm_harness(request.getfixturevalue("softhsm"))
        return
    url = (f"sqlite:///{tmp_path_factory.mktemp('vault') / 'store.db'}"
           if request.param == "vault-sqlite" else request.getfixturevalue("shared_pg_url"))
    yield from _vault_harness(url, request.param)
