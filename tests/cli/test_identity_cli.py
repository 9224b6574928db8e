"""`egressguard identity` as an operator runs it (the installed script, a real store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("egressguard")
pytestmark = pytest.mark.timeout(120)


def run(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "identity", *args, "--store", store],
                          capture_output=True, text=True, timeout=100, check=False)


def test_create_prints_the_secret_once_then_list_show_rotate_revoke(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    created = run(store, "create", "web", "--description", "shop", "-o", "json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]
    assert secret.startswith("egi_")
    listed = run(store, "list", "-o", "json")
    shown = run(store, "show", "web")
    assert secret not in listed.stdout + shown.stdout
    assert json.loads(listed.stdout)[0]["methods"] == ["basic"]
    assert "state: active" in shown.stdout
    rotated = run(store, "rotate", "web", "-o", "json")
    assert json.loads(rotated.stdout)["secret"] not in (secret, None)
    assert run(store, "revoke", "web").stdout.strip() == "revoked identity web"
    assert json.loads(run(store, "show", "web", "-o", "json").stdout)["state"] == "revoked"


@pytest.mark.parametrize("args, needle", [
    (["show", "nobody"], "identity 'nobody' not found"),
    (["create", "bad name"], "identity name 'bad name'"),
    (["create", "web", "--expires", "soon"], "--expires"),
    (["create", "web", "--spiffe-id", "http://x"], "not a SPIFFE ID"),
])
def test_errors_are_one_line_with_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run(f"sqlite:///{tmp_path / 'store.db'}", *args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
