"""The REST API over TLS, checked with the real `curl --cacert`: the self-signed
certificate made in the data home, a certificate the operator gives (`serve`), bad pairs
refused at start, and expired tokens refused with the reason."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from egressguard.control.apitls import TLSConfigError, check_pair, fingerprint, self_signed
from egressguard.store import Store
from egressguard.store.schema import TokenRow

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20)


def _start(argv: list[str], home: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `egressguard ARGV`; return it with its stdout lines up to the API's."""
    env = {**os.environ, "EGRESSGUARD_HOME": str(home)}
    proc = subprocess.Popen([EGRESSGUARD, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "certificate" in line or "error" in line:
            break
    return proc, lines


@pytest.fixture
def admin_token(tmp_path: Path) -> str:
    store = Store(f"sqlite:///{tmp_path / 'egressguard.db'}")
    try:
        return store.create_token("ci", "admin", "test")[0]
    finally:
        store.close()


@pytest.fixture
def api_over_tls(tmp_path: Path, admin_token: str) -> Iterator[tuple[str, list[str]]]:
    proc, lines = _start(["api", "--port", "0", "--api-tls-self-signed"], tmp_path)
    try:
        url = next(line for line in lines if "REST API on" in line).split(" on ")[1].split()[0]
        yield url, lines
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_self_signed_api_answers_curl_with_cacert_and_prints_its_fingerprint(
        tmp_path: Path, admin_token: str, api_over_tls: tuple[str, list[str]]) -> None:
    url, lines = api_over_tls
    assert url.startswith("https://127.0.0.1:")
    cert = tmp_path / "api-tls" / "cert.pem"
    key = tmp_path / "api-tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    printed = next(line for line in lines if "SHA-256" in line).split("SHA-256 ")[1].strip()
    openssl = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
                              str(cert)], capture_output=True, text=True, check=True)
    assert openssl.stdout.strip().split("=")[1] == printed
    answer = _curl("--cacert", str(cert), "-H", f"Authorization: Bearer {admin_token}",
                   f"{url}/v1/clusters/default")
    assert answer.returncode == 0, answer.stderr
    assert '"restrictOutboundNetworkAccess":"Enabled"' in answer.stdout
    # not trusted without the certificate; plain HTTP is not served on the TLS port
    assert _curl(f"{url}/healthz").returncode == 60  # peer certificate cannot be verified
    plain = _curl(f"{url.replace('https://', 'http://')}/healthz")
    assert plain.returncode != 0 or '"status"' not in plain.stdout
    # by name too: the certificate names localhost
    port = url.rsplit(":", 1)[1]
    named = _curl("--cacert", str(cert), f"https://localhost:{port}/healthz")
    assert named.returncode == 0 and '"status"' in named.stdout, named.stderr


def test_expired_token_is_401_with_the_reason_over_tls(
        tmp_path: Path, api_over_tls: tuple[str, list[str]]) -> None:
    url, _lines = api_over_tls
    store = Store(f"sqlite:///{tmp_path / 'egressguard.db'}")
    try:
        token, _info = store.create_token("old", "viewer", "test", lifetime=60)
        with store.engine.begin() as conn:
            conn.execute(update(TokenRow).where(TokenRow.name == "old").values(
                expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        listed = {t.name: t for t in store.tokens()}
        assert listed["old"].expires_at is not None
    finally:
        store.close()
    cert = str(tmp_path / "api-tls" / "cert.pem")
    answer = _curl("--cacert", cert, "-w", "\n%{http_code}", "-H",
                   f"Authorization: Bearer {token}", f"{url}/v1/clusters/default")
    body, code = answer.stdout.rsplit("\n", 1)
    assert code == "401"
    assert "token 'old' expired at" in body and "token rotate old" in body


def test_self_signed_certificate_is_reused_and_renewed_for_a_new_host(tmp_path: Path
                                                                      ) -> None:
    first = self_signed(tmp_path, "127.0.0.1")
    again = self_signed(tmp_path, "127.0.0.1")
    assert again.fingerprint == first.fingerprint
    other = self_signed(tmp_path, "gateway.internal")
    assert other.fingerprint != first.fingerprint
    assert fingerprint(other.cert.read_bytes()) == other.fingerprint


def test_mismatched_or_missing_pair_is_one_clear_error(tmp_path: Path) -> None:
    a = self_signed(tmp_path / "a", "127.0.0.1")
    b = self_signed(tmp_path / "b", "127.0.0.1")
    with pytest.raises(TLSConfigError, match="cannot be used together"):
        check_pair(a.cert, b.key)
    with pytest.raises(TLSConfigError, match="no such file"):
        check_pair(tmp_path / "absent.pem", a.key)


def test_serve_with_a_given_certificate_serves_https(tmp_path: Path, admin_token: str
                                                     ) -> None:
    pair = self_signed(tmp_path / "operator", "127.0.0.1")
    policy = tmp_path / "policy.yaml"
    policy.write_text("restrict_outbound_network_access: true\n")
    proc, lines = _start(["serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
                          "--policy", str(policy), "--no-audit",
                          "--api-tls-cert", str(pair.cert), "--api-tls-key", str(pair.key)],
                         tmp_path)
    try:
        url = next(line for line in lines if "REST API on" in line).split(" on ")[1].split()[0]
        assert pair.fingerprint in "".join(lines)
        answer = _curl("--cacert", str(pair.cert), "-H", f"Authorization: Bearer {admin_token}",
                       f"{url}/v1/clusters/default")
        assert answer.returncode == 0 and "restrictOutboundNetworkAccess" in answer.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    a = self_signed(tmp_path / "a", "127.0.0.1")
    b = self_signed(tmp_path / "b", "127.0.0.1")
    env = {**os.environ, "EGRESSGUARD_HOME": str(tmp_path)}
    done = subprocess.run([EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen",
                           "127.0.0.1:0", "--no-audit", "--api-tls-cert", str(a.cert),
                           "--api-tls-key", str(b.key)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot be used together" in done.stderr
    assert "Traceback" not in done.stderr
