"""`egressguard cluster create|delete`, and `serve --cluster NAME` on a store that lacks it
(one line naming the fix, exit 2; it starts once the cluster is created), on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.store import Store

pytestmark = pytest.mark.timeout(120)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
runner = CliRunner()
POLICY = """\
restrict_outbound_network_access: true
allowed_fqdn_list: [api.example.com]
"""


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_create_from_file_unrestricted_or_default_then_delete(store_url: str,
                                                               tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    code, out = _run("cluster", "create", "prod", "--from-file", str(policy),
                     "--store", store_url, "-o", "json")
    assert code == 0, out
    props = json.loads(out)["properties"]
    assert props["allowedFqdnList"] == ["api.example.com"] and props["version"] == 1
    code, out = _run("cluster", "create", "dev", "--unrestricted", "--store", store_url,
                     "-o", "json")
    assert json.loads(out)["properties"]["restrictOutboundNetworkAccess"] == "Disabled"
    code, out = _run("cluster", "create", "ci", "--store", store_url, "-o", "json")
    assert json.loads(out)["properties"]["restrictOutboundNetworkAccess"] == "Enabled"

    code, out = _run("cluster", "delete", "dev", "--store", store_url)
    assert code == 2 and "add --yes" in out
    code, out = _run("cluster", "delete", "dev", "--yes", "--store", store_url)
    assert (code, out.strip()) == (0, "deleted cluster dev (1 version)")
    with Store(store_url) as st:
        assert st.clusters() == ["ci", "default", "prod"]


@pytest.mark.parametrize(("args", "message"), [
    (("cluster", "create", "prod"), "'prod' already exists"),
    (("cluster", "create", "Bad_Name"), "invalid cluster name"),
    (("cluster", "create", "x", "--unrestricted", "--from-file", "p.yaml"), "not both"),
    (("cluster", "create", "x", "--from-file", "/nonexistent/p.yaml"), "p.yaml"),
    (("cluster", "delete", "default", "--yes"), "cannot be deleted"),
    (("cluster", "delete", "nope", "--yes"), "not found"),
])
def test_create_and_delete_refusals_are_one_line_exit_2(sqlite_url: str, args: tuple[str, ...],
                                                         message: str) -> None:
    with Store(sqlite_url) as st:
        st.create_cluster("prod", st.current("default").policy, "t")
    code, out = _run(*args, "--store", sqlite_url)
    assert code == 2, out
    assert out.startswith("error: ") and message in out and "Traceback" not in out
    if "--from-file" not in args:  # a policy's load errors list every problem, one a line
        assert out.count("\n") == 1, out
    with Store(sqlite_url) as st:
        assert st.clusters() == ["default", "prod"]


def test_serve_on_a_store_without_the_cluster_says_how_to_create_it(store_url: str,
                                                                     tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path)}
    serve = [EGRESSGUARD, "serve", "--store", store_url, "--cluster", "prod", "--listen",
             "127.0.0.1:0", "--no-api", "--no-audit"]
    refused = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: cluster 'prod' does not exist in the store; create it with `egressguard "
        "cluster create prod` (add --store URL if the store is not the configured one)"]

    code, out = _run("cluster", "create", "prod", "--store", store_url)
    assert code == 0, out
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert re.search(r"listening on 127\.0\.0\.1:\d+", lines[0]), lines
        assert "prod" in lines[1] and "version 1" in lines[1], lines
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_store_and_cluster_named_once_in_the_config_file_are_used_by_every_command(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"store: {store_url}\ncluster: prod\n")
    monkeypatch.setenv("EGRESSGUARD_CONFIG", str(cfg))
    assert _run("cluster", "create", "prod")[0] == 0
    code, out = _run("cluster", "update", "--add-allowed-fqdn", "api.example.com", "-o", "json")
    assert code == 0, out
    assert json.loads(out)["properties"]["allowedFqdnList"] == ["api.example.com"]
    code, out = _run("versions", "list", "-o", "json")
    assert [(v["cluster"], v["version"]) for v in json.loads(out)] == [("prod", 2), ("prod", 1)]
    with Store(store_url) as st:
        assert st.current("prod").policy.allowed_fqdn_list == ["api.example.com"]
        assert st.current("default").number == 1


def test_home_flag_puts_the_store_in_that_home(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from egressguard import config

    monkeypatch.setattr(config, "_home_flag", None)  # restored after the test
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "env-home"))
    monkeypatch.chdir(tmp_path)
    assert _run("--home", "flag-home", "cluster", "create", "prod")[0] == 0
    with Store(f"sqlite:///{tmp_path / 'flag-home' / 'egressguard.db'}") as st:
        assert st.clusters() == ["default", "prod"]
    assert not (tmp_path / "env-home").exists()
