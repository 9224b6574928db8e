"""The API client's pure parts: which error (and hint) each HTTP answer becomes, server
URLs and token files refused with a reason, the config file `login` writes, and the
module staying import-light (no httpx, FastAPI or SQLAlchemy until a request)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egressguard import config
from egressguard.control.client import (
    ApiForbidden,
    ApiNotFound,
    ApiPolicyRefused,
    ApiRejected,
    ApiServerError,
    ApiUnauthorized,
    error_for,
    read_token_file,
    server_for,
    validate_server,
)
from egressguard.errors import Denied, InputError, Unavailable


@pytest.mark.parametrize(("status", "message", "kind", "base", "hint"), [
    (401, "invalid or revoked token", ApiUnauthorized, Denied, "egressguard login"),
    (401, "token 'ci' expired at 2026-01-01", ApiUnauthorized, Denied, "token rotate"),
    (403, "role 'viewer' may not do this", ApiForbidden, Denied, "--grant CLUSTER=ROLE"),
    (404, "cluster 'x' not found", ApiNotFound, InputError, None),
    (409, "a policy file is in force", ApiRejected, InputError, None),
    (422, "policy refused:\nexceeds the ceiling", ApiPolicyRefused, InputError, None),
    (422, "properties.x: bad", ApiRejected, InputError, None),
    (503, "the policy store is unavailable", ApiServerError, Unavailable, "retry later"),
])
def test_each_http_error_becomes_a_typed_error_with_a_hint(
        status: int, message: str, kind: type, base: type, hint: str | None) -> None:
    error = error_for(status, message)
    assert type(error) is kind and isinstance(error, base)
    assert error.status == status and str(error) == message
    if hint is None:
        assert error.hint is None
    else:
        assert error.hint is not None and hint in error.hint


@pytest.mark.parametrize("url", ["gw:8080", "ftp://gw", "https://", "", "file:///etc"])
def test_a_server_url_must_be_http_or_https_with_a_host(url: str) -> None:
    with pytest.raises(ApiRejected, match="invalid server URL"):
        validate_server(url)


def test_server_url_loses_its_trailing_slash() -> None:
    assert validate_server(" https://gw:8080/ ") == "https://gw:8080"


def test_token_file_empty_missing_or_huge_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApiRejected, match="cannot read"):
        read_token_file(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ApiRejected, match="expected one token"):
        read_token_file(empty)
    huge = tmp_path / "huge"
    huge.write_text("x" * 5000)
    with pytest.raises(ApiRejected, match="expected one token"):
        read_token_file(huge)
    good = tmp_path / "good"
    good.write_text("egt_abc\n")
    assert read_token_file(good) == "egt_abc"


def test_login_config_keeps_other_keys_and_removes_on_logout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cfg" / "config.yaml"
    target.parent.mkdir()
    target.write_text("cluster: prod\n")
    monkeypatch.setenv(config.ENV_CONFIG, str(target))
    monkeypatch.delenv(config.ENV_API, raising=False)
    config.write_user_config({"api": "https://gw:8080", "token_file": "/t", "ca_file": None})
    assert yaml.safe_load(target.read_text()) == {
        "cluster": "prod", "api": "https://gw:8080", "token_file": "/t"}
    assert target.stat().st_mode & 0o077 == 0
    assert config.current().api.value == "https://gw:8080"
    assert server_for(None, None) == "https://gw:8080"
    assert server_for("sqlite:///x.db", None) is None  # --store: direct access
    assert server_for("sqlite:///x.db", "http://other") == "http://other"
    config.write_user_config({"api": None, "token_file": None})
    assert yaml.safe_load(target.read_text()) == {"cluster": "prod"}


def test_the_client_module_imports_no_http_or_server_stack() -> None:
    code = ("import sys, egressguard.control.client\n"
            "heavy = [m for m in ('httpx', 'fastapi', 'sqlalchemy', 'starlette') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == ""
