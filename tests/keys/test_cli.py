"""`egressguard keyvault`: the key lifecycle and access policies from the command line,
with one-line errors and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import build_app

pytestmark = pytest.mark.timeout(60)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EGRESSGUARD_MASTER_KEY", raising=False)
    monkeypatch.setenv("EGRESSGUARD_STORE", f"sqlite:///{tmp_path / 'store.db'}")
    app = build_app(["keyvault"])
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> tuple[int, str, str]:
        result = runner.invoke(app, ["keyvault", *args])
        if ok:
            assert result.exit_code == 0, result.stderr
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_key_lifecycle_create_rotate_disable_enable_delete_recover(run) -> None:  # type: ignore[no-untyped-def]
    created = json.loads(run("key", "create", "--name", "audit", "--kty", "AES", "--size",
                             "256", "-o", "json")[1])
    assert created["kid"].startswith("vault://default/keys/audit/")
    rotated = json.loads(run("key", "rotate", "-n", "audit", "-o", "json")[1])
    assert rotated["versions"][0] == created["latest"] and len(rotated["versions"]) == 2
    assert json.loads(run("key", "disable", "-n", "audit", "-o", "json")[1])["enabled"] is False
    assert json.loads(run("key", "enable", "-n", "audit", "-o", "json")[1])["enabled"] is True
    deleted = json.loads(run("key", "delete", "-n", "audit", "-o", "json")[1])
    assert "scheduledPurgeDate" in deleted
    assert json.loads(run("key", "list", "-o", "json")[1]) == []
    assert [k["name"] for k in json.loads(run("key", "list", "--deleted", "-o", "json")[1])] \
        == ["audit"]
    code, _, err = run("key", "purge", "-n", "audit", ok=False)
    assert code == 2 and "purge protection" in err and len(err.strip().splitlines()) == 1
    recovered = json.loads(run("key", "recover", "-n", "audit", "-o", "json")[1])
    assert recovered["versions"] == rotated["versions"]
    assert "audit" in run("key", "show", "-n", "audit")[1]


def test_purge_in_a_vault_without_purge_protection(run) -> None:  # type: ignore[no-untyped-def]
    props = json.loads(run("create", "--vault", "lab", "--no-purge-protection",
                           "--retention-days", "7", "-o", "json")[1])
    assert props == {"name": "lab", "vaultUri": "vault://lab", "enableSoftDelete": True,
                     "softDeleteRetentionInDays": 7, "enablePurgeProtection": False}
    run("key", "create", "--vault", "lab", "-n", "k1", "--kty", "AES", "--size", "256")
    run("key", "delete", "--vault", "lab", "-n", "k1")
    assert json.loads(run("key", "purge", "--vault", "lab", "-n", "k1", "-o", "json")[1]) \
        == {"name": "k1", "purged": True}
    code, _, err = run("key", "show", "--vault", "lab", "-n", "k1", ok=False)
    assert code == 2 and "not found" in err


def test_access_grant_and_revoke(run) -> None:  # type: ignore[no-untyped-def]
    granted = json.loads(run("access", "grant", "--identity", "gateway", "--permissions",
                             "get,wrapKey,unwrapKey", "-o", "json")[1])
    assert granted == {"gateway": ["get", "unwrapKey", "wrapKey"]}
    revoked = json.loads(run("access", "revoke", "--identity", "gateway", "--permissions",
                             "unwrapKey", "-o", "json")[1])
    assert revoked == {"gateway": ["get", "wrapKey"]}
    code, _, err = run("access", "grant", "--identity", "gateway", "--permissions",
                       "get,purge", ok=False)
    assert code == 2 and "unknown permission(s) purge" in err


@pytest.mark.parametrize(("args", "message"), [
    (["key", "create", "-n", "k", "--kty", "RSA", "--size", "1024"], "unsupported key RSA 1024"),
    (["key", "show", "-n", "missing"], "key 'missing' not found"),
    (["key", "list", "--vault", "nope"], "create it: egressguard keyvault create --vault nope"),
    (["key", "rotate", "-n", "bad/name"], "invalid key name"),
])
def test_bad_input_is_one_line_with_a_reason(run, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(*args, ok=False)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_the_installed_command_refuses_a_readable_master_key_in_one_line(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)  # a private home: only the key is exposed
    (home / "master.key").write_text("A" * 43 + "=\n")
    (home / "master.key").chmod(0o644)
    env = {"EGRESSGUARD_HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([EGRESSGUARD, "keyvault", "key", "list"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 2 and "readable by others" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
