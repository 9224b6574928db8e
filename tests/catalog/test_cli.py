"""The commands as users run them.

`egressguard check` runs as real processes of .venv/bin/egressguard (the acceptance test of
a generated profile); the other commands run in-process through typer's runner, because
each process start costs seconds of imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.catalog.model import get_catalog
from tests.catalog.conftest import FIXTURE_TAGS

EXE = Path(sys.executable).parent / "egressguard"
REGION = {"public": "westeurope", "china": "chinaeast2", "usgov": "usgovvirginia"}

pytestmark = pytest.mark.timeout(240)


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EGRESSGUARD_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, env=env,
                          cwd=home.parent, timeout=120, check=False)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command in-process; same exit codes and output as the executable."""
    from egressguard.cli.main import app

    result = CliRunner().invoke(app, list(args), env={"EGRESSGUARD_HOME": str(home),
                                                     "COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def _url(pattern: str, region: str) -> str:
    pattern = pattern.replace("<location>", region)
    if pattern.startswith("."):
        pattern = pattern[1:]
    first, _, rest = pattern.partition(".")
    host = f"{first.replace('*', 'x1')}.{rest}" if "*" in first else pattern
    return f"https://{host}/"


# Every `egressguard` process start imports all areas (seconds on a loaded machine), so by
# default each cloud sends one allowed and one denied URL through real processes and the
# rest of its required FQDN rules through the same `check` command in-process. Set
# EGRESSGUARD_FULL_CLI=1 to send every rule through a process.
FULL = os.environ.get("EGRESSGUARD_FULL_CLI") == "1"


def test_profile_aks_then_check_allows_every_required_fqdn_rule_and_denies_the_rest(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "servicetags", "import", str(FIXTURE_TAGS)).returncode == 0
    jobs: list[tuple[str, tuple[str, ...], int, bool]] = []  # name, args, exit, in a process
    for cloud, region in REGION.items():
        policy = tmp_path / f"aks-{cloud}.yaml"
        made = cli(home, "profile", "aks", "--cloud", cloud, "--region", region,
                   "--out", str(policy))
        assert made.returncode == 0, made.stderr
        assert "warning" not in made.stderr  # every tag it names was imported
        section = get_catalog("aks").section(f"{'global' if cloud == 'public' else cloud}-fqdn")
        for i, row in enumerate(section.rows):
            url = _url(row.targets_for(cloud)[0], region)
            jobs.append((f"{cloud} {row.id}", ("check", url, "--policy", str(policy)), 0,
                         FULL or i == 0))
        for denied in ("https://example.org/", "https://nvidia.github.io/",
                       _url("*.hcp.<location>.azmk8s.io", "eastus2")):
            jobs.append((f"{cloud} {denied}", ("check", denied, "--policy", str(policy)), 1,
                         FULL or denied.endswith(".org/")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        spawned = pool.map(lambda job: run(home, *job[1]), [j for j in jobs if j[3]])
        results = [(job, cli(home, *job[1])) for job in jobs if not job[3]]
        results += list(zip([j for j in jobs if j[3]], spawned, strict=True))
    failures = [f"{name}: exit {res.returncode} (want {want}): {res.stdout}{res.stderr}"
                for (name, _, want, _), res in results if res.returncode != want]
    assert failures == []
    assert len(results) == 24 + 9


def test_bad_profile_arguments_exit_2_and_list_the_choices(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cases = [
        (("profile", "aks", "--region", "westeurope", "--features", "gpu,telepathy"),
         "choose from: ubuntu-updates, gpu, windows"),
        (("profile", "aks", "--cloud", "moon", "--region", "westeurope"),
         "choose one of: public, china, usgov"),
        (("profile", "aks", "--cloud", "usgov", "--region", "westeurope"), "usgovvirginia"),
        (("profile", "aks", "--region", "westeurope", "--features", "api-server-access"),
         "--api-server-ip"),
        (("profile", "aml", "--region", "westeurope"), "--storage-account"),
        (("catalog", "show", "nope"), "aks, aml, data-explorer, iot-hub"),
        (("servicetags", "show", "AzureCloud.westeurope"), "no service tags imported"),
    ]
    results = [cli(home, *case[0]) for case in cases]
    for (args, needle), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert needle in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_servicetags_import_show_and_bad_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "ServiceTags_Public_broken.json"
    bad.write_text('{"values": [{"name": "AzureCloud.x", "properties": '
                   '{"addressPrefixes": ["999.0.0.0/8"]}}]}')
    assert cli(home, "servicetags", "import", str(FIXTURE_TAGS)).returncode == 0
    rejected = cli(home, "servicetags", "import", str(bad))
    assert rejected.returncode == 2 and "999.0.0.0/8" in rejected.stderr
    shown = cli(home, "servicetags", "show", "storage.westeurope", "--output", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["addressPrefixes"] == ["20.60.28.0/23", "52.239.140.0/22"]


def test_catalog_list_and_show_as_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    listed = json.loads(cli(home, "catalog", "list", "--output", "json").stdout)
    assert {c["name"] for c in listed["catalogs"]} == {"aks", "aml", "data-explorer",
                                                       "iot-hub"}
    assert "AzureKubernetesService" in listed["fqdn_tags"]
    shown = json.loads(cli(home, "catalog", "show", "aks", "--cloud", "usgov",
                           "--output", "json").stdout)
    assert all("usgov" in r["clouds"] for r in shown["rows"])
    assert any(r.get("targets", {}).get("usgov") == ["*.vault.usgovcloudapi.net"]
               for r in shown["rows"])
    adx = json.loads(cli(home, "catalog", "show", "data-explorer", "--output", "json").stdout)
    assert adx["immutable_callouts"][5] == {"CalloutType": "external_data",
                                            "CalloutUriRegex": ".*", "CanCall": True}
    table = cli(home, "catalog", "show", "aml")
    assert table.returncode == 0 and "/services/Azure/MachineLearning" in table.stdout
