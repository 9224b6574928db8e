"""The CLI through a real running API (`egressguard api` in a child process): `login`
stores the server, commands then go through it with the server's role checks (per
cluster) and the token's name as the author; `--store` still opens the store directly;
HTTP errors are one line with a hint; HTTPS with the server's certificate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from egressguard.policy import Policy
from egressguard.store import Store

pytestmark = pytest.mark.timeout(120)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


@dataclass
class Server:
    url: str
    store_url: str
    home: Path
    tokens: dict[str, str]


def _serve(home: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "EGRESSGUARD_HOME": str(home)}
    proc = subprocess.Popen([EGRESSGUARD, "api", "--port", "0", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "REST API on" in line, line
    return proc, line.split(" on ")[1].split()[0]


def _server(tmp_path: Path, *extra: str) -> Iterator[Server]:
    home = tmp_path / "server"
    home.mkdir()
    store_url = f"sqlite:///{home / 'egressguard.db'}"
    store = Store(store_url)
    try:
        store.create_cluster("alpha", Policy(), "setup")
        tokens = {"admin": store.create_token("root", "admin", "setup")[0],
                  "ops": store.create_token("ops", "none", "setup",
                                            grants={"alpha": "operator",
                                                    "default": "viewer"})[0]}
    finally:
        store.close()
    proc, url = _serve(home, *extra)
    try:
        yield Server(url, store_url, home, tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from _server(tmp_path)


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """A user with no store of their own and an empty config."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("EGRESSGUARD_TOKEN", "EGRESSGUARD_API", "EGRESSGUARD_STORE",
                        "EGRESSGUARD_CONFIG")}
    env["EGRESSGUARD_HOME"] = str(tmp_path / "client-home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "client-config")
    return env


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGUARD, *argv], env=env, capture_output=True, text=True,
                          timeout=60)


def _login(server: Server, env: dict[str, str], tmp_path: Path, who: str) -> Path:
    token_file = tmp_path / f"{who}.token"
    token_file.write_text(server.tokens[who] + "\n")
    done = _run(env, "login", "--server", server.url, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert f"as {'root' if who == 'admin' else who}" in done.stdout
    return token_file


def test_login_stores_the_server_and_token_file_never_the_token(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    token_file = _login(server, client_env, tmp_path, "ops")
    config_file = Path(client_env["XDG_CONFIG_HOME"]) / "egressguard" / "config.yaml"
    saved = yaml.safe_load(config_file.read_text())
    assert saved == {"api": server.url, "token_file": str(token_file)}
    assert server.tokens["ops"] not in config_file.read_text()
    assert config_file.stat().st_mode & 0o077 == 0
    shown = json.loads(_run(client_env, "config", "show", "-o", "json").stdout)
    assert shown["api"]["value"] == server.url
    assert shown["token_file"]["value"] == str(token_file)
    assert _run(client_env, "logout").returncode == 0
    assert "api" not in (yaml.safe_load(config_file.read_text()) or {})


def test_commands_go_through_the_api_with_the_tokens_name_as_author(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    _login(server, client_env, tmp_path, "ops")
    done = _run(client_env, "cluster", "update", "--name", "alpha",
                "--add-allowed-fqdn", "api.example.com", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["properties"]["allowedFqdnList"] == ["api.example.com"]
    assert _run(client_env, "rollback", "1", "--name", "alpha").returncode == 0
    listed = json.loads(_run(client_env, "versions", "list", "--name", "alpha",
                             "-o", "json").stdout)
    assert [(v["version"], v["principal"]) for v in listed][:2] == [(3, "ops"), (2, "ops")]
    shown = _run(client_env, "versions", "show", "2", "--name", "alpha")
    assert "api.example.com" in shown.stdout
    diff = _run(client_env, "versions", "diff", "1", "2", "--name", "alpha")
    assert "+" in diff.stdout and "api.example.com" in diff.stdout
    clusters = json.loads(_run(client_env, "cluster", "list", "-o", "json").stdout)
    assert {c["cluster"] for c in clusters} == {"alpha", "default"}
    # the store the server uses has the same history: the CLI did not write elsewhere
    store = Store(server.store_url)
    try:
        assert store.current("alpha").principal == "ops"
    finally:
        store.close()
    assert not (Path(client_env["EGRESSGUARD_HOME"]) / "egressguard.db").exists()


def test_server_role_checks_apply_and_errors_are_one_line_with_a_hint(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    _login(server, client_env, tmp_path, "ops")
    refused = _run(client_env, "cluster", "update", "--name", "default",
                   "--add-allowed-fqdn", "x.example.com")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert "on cluster 'default'" in lines[0] and "(hint: ask an admin" in lines[0]
    assert _run(client_env, "cluster", "show", "--name", "default").returncode == 0
    tokens = _run(client_env, "token", "list")
    assert tokens.returncode == 2 and "needs one of: admin" in tokens.stderr
    missing = _run(client_env, "versions", "show", "9", "--name", "alpha")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    # logs need an auditor: ops is not one
    assert _run(client_env, "logs", "--cluster", "alpha").returncode == 2
    # recommend reads decisions: an operator on alpha may, on its cluster only
    made = _run(client_env, "recommend", "--cluster", "alpha")
    assert made.returncode == 0, made.stderr
    assert "restrict_outbound_network_access" in made.stdout
    assert _run(client_env, "recommend").returncode == 2


def test_tokens_through_the_api_show_expiry_and_grants(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    _login(server, client_env, tmp_path, "admin")
    made = _run(client_env, "token", "create", "--name", "ci", "--role", "none",
                "--grant", "alpha=viewer", "--expires", "30d", "-o", "json")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert record["created_by"] == "root" and record["grants"] == {"alpha": "viewer"}
    listed = {t["name"]: t for t in json.loads(_run(client_env, "token", "list", "-o",
                                                    "json").stdout)}
    assert listed["ci"]["expires_at"] and listed["ci"]["grants"] == {"alpha": "viewer"}
    table = _run({**client_env, "COLUMNS": "250"}, "token", "list").stdout
    assert "Expires" in table and "alpha=viewer" in table
    rotated = json.loads(_run(client_env, "token", "rotate", "ci", "-o", "json").stdout)
    assert rotated["grants"] == {"alpha": "viewer"} and rotated["token"] != record["token"]
    assert "revoked 1" in _run(client_env, "token", "revoke", "ci").stdout
    assert _run(client_env, "logs", "--cluster", "alpha").returncode == 0


def test_store_flag_still_opens_the_store_directly(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    _login(server, client_env, tmp_path, "ops")
    direct = _run(client_env, "token", "list", "--store", server.store_url, "-o", "json")
    assert direct.returncode == 0, direct.stderr
    assert {t["name"] for t in json.loads(direct.stdout)} >= {"root", "ops"}


def test_unreachable_server_and_bad_tokens_say_what_to_do(
        server: Server, client_env: dict[str, str], tmp_path: Path) -> None:
    token_file = _login(server, client_env, tmp_path, "ops")
    token_file.write_text("egt_not-a-real-token\n")
    bad = _run(client_env, "cluster", "show", "--name", "alpha")
    assert bad.returncode == 2
    assert "invalid or revoked token" in bad.stderr and "egressguard login" in bad.stderr
    env = {**client_env, "EGRESSGUARD_API": "http://127.0.0.1:9"}
    down = _run(env, "cluster", "show", "--name", "alpha")
    assert down.returncode == 2 and "cannot reach the API at http://127.0.0.1:9" in down.stderr
    assert "(hint:" in down.stderr and "Traceback" not in down.stderr
    wrong = _run(client_env, "login", "--server", server.url, "--token-file",
                 str(token_file))
    assert wrong.returncode == 2 and "invalid or revoked token" in wrong.stderr


def test_login_over_https_needs_the_servers_certificate(
        tmp_path: Path, client_env: dict[str, str]) -> None:
    for server in _server(tmp_path, "--api-tls-self-signed"):
        assert server.url.startswith("https://")
        token_file = tmp_path / "ops.token"
        token_file.write_text(server.tokens["ops"])
        untrusted = _run(client_env, "login", "--server", server.url, "--token-file",
                         str(token_file))
        assert untrusted.returncode == 2
        assert "cannot verify the TLS certificate" in untrusted.stderr
        assert "--cacert" in untrusted.stderr
        cert = server.home / "api-tls" / "cert.pem"
        done = _run(client_env, "login", "--server", server.url, "--token-file",
                    str(token_file), "--cacert", str(cert))
        assert done.returncode == 0, done.stderr
        shown = _run(client_env, "cluster", "show", "--name", "alpha", "-o", "json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "alpha"
