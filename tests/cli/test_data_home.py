"""The data home does not depend on the working directory, and it is private.

Commands run from two different directories, with the home named once in the config file,
must see one store and one audit key: `cluster update` from one directory changes what a
gateway started in another enforces, and `logs verify` from a third says intact."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import start_http

pytestmark = pytest.mark.timeout(120)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


def _env(tmp_path: Path) -> dict[str, str]:
    """No EGRESSGUARD_* at all: the home comes from `$XDG_CONFIG_HOME/.../config.yaml`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSGUARD_")}
    cfg = tmp_path / "cfg" / "egressguard" / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"home: {tmp_path / 'home'}\n")
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "PYTHONUNBUFFERED": "1"}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([EGRESSGUARD, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_commands_from_other_directories_share_one_store_and_one_audit_key(
        tmp_path: Path) -> None:
    env = _env(tmp_path)
    upstream = start_http()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.mkdir()
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
         "--resolve", "up.test=127.0.0.1", "--no-system-resolver", "--audit-writer", "thread"],
        cwd=a, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on (\S+)", line)
        assert found, line
        url = f"http://up.test:{upstream.port}/hello"
        with httpx.Client(proxy=f"http://{found.group(1)}") as client:
            assert client.get(url).status_code == 403

            rules = [{"name": "loopback", "priority": 100, "action": "allow",
                      "rules": [{"name": "up", "destinations": ["127.0.0.0/8"],
                                 "protocols": ["TCP"], "ports": [str(upstream.port)],
                                 "matchResolvedNames": True}]}]
            update = _run(["cluster", "update", "--set",
                           f"properties.networkRuleCollections={json.dumps(rules)}"], b, env)
            assert update.returncode == 0, update.stderr
            deadline = time.monotonic() + 10
            while (status := client.get(url).status_code) != 200 and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        upstream.stop()

    verify = _run(["logs", "verify"], c, env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout and "NOT intact" not in verify.stdout
    shown = _run(["logs", "--dest", "up.test", "-o", "json"], c, env)
    verdicts = [json.loads(x)["verdict"] for x in shown.stdout.splitlines()]
    assert "deny" in verdicts and "allow" in verdicts
    for where in (a, b, c):
        assert list(where.iterdir()) == [], f"{where} got files: the cwd was used"
    home = tmp_path / "home"
    assert {"egressguard.db", "audit.key"} <= {p.name for p in home.iterdir()}


def test_new_data_home_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    env = _env(tmp_path)
    listed = _run(["cluster", "list"], tmp_path / "a", env)
    assert listed.returncode == 0, listed.stderr
    _run(["logs", "verify"], tmp_path / "a", env)  # creates the audit key
    home = tmp_path / "home"
    assert _mode(home) == 0o700
    files = [p for p in home.iterdir() if p.is_file()]
    assert {"egressguard.db", "audit.key"} <= {p.name for p in files}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_world_readable_home_and_store_are_made_private_with_one_warning(
        tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _run(["cluster", "list"], tmp_path / "a", env).returncode == 0
    home = tmp_path / "home"
    os.chmod(home, 0o755)
    for p in home.iterdir():
        os.chmod(p, 0o644)
    again = _run(["cluster", "list"], tmp_path / "a", env)
    assert again.returncode == 0, again.stderr
    warnings = [x for x in again.stderr.splitlines() if "private" in x]
    assert len(warnings) == 1, again.stderr
    assert "was 0755" in warnings[0] and "egressguard.db was 0644" in warnings[0]
    assert _mode(home) == 0o700
    assert all(_mode(p) == 0o600 for p in home.iterdir() if p.is_file())
    quiet = _run(["cluster", "list"], tmp_path / "a", env)
    assert "private" not in quiet.stderr


def test_store_file_named_outside_the_home_is_created_0600(tmp_path: Path) -> None:
    env = _env(tmp_path)
    db = tmp_path / "elsewhere" / "store.db"
    out = _run(["cluster", "list", "--store", f"sqlite:///{db}"], tmp_path / "a", env)
    assert out.returncode == 0, out.stderr
    assert _mode(db) == 0o600
    assert all(_mode(p) == 0o600 for p in db.parent.iterdir())


def test_imported_service_tags_land_in_the_configured_home_0600(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from egressguard.catalog.servicetags import import_file
    from tests.catalog.conftest import FIXTURE_TAGS

    monkeypatch.delenv("EGRESSGUARD_HOME")
    monkeypatch.delenv("EGRESSGUARD_CONFIG")
    env = _env(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    monkeypatch.chdir(tmp_path / "cfg")
    stored, _ = import_file(FIXTURE_TAGS)
    assert stored.parent == tmp_path / "home"
    assert _mode(stored) == 0o600 and _mode(stored.parent) == 0o700
