"""Start-up: `--help`, `--version`, completion and API-path commands load no heavy module,
the root's stand-in summaries stay the commands' own, usage errors are one line.

Not timing assertions (the machine is shared): what a command imports decides its start-up
cost, so the tests check `sys.modules` in a fresh process. Figures: bench/cli_startup.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from egressguard.cli.main import AREAS, SUMMARIES, build_app

HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg",
         "cryptography", "egressguard.store.store", "egressguard.engine.snapshot")

PROBE = """
import json, sys
from egressguard.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m if m.startswith('egressguard') else m.split('.')[0]
                for m in sys.modules} & set(json.loads(HEAVY)))
sys.stderr.write('\\nLOADED ' + json.dumps({'code': code, 'heavy': heavy}) + '\\n')
"""


def probe(home: Path, *args: str, **env: str) -> tuple[int, list[str], str, str]:
    """Run the CLI in a fresh interpreter: (exit code, heavy modules loaded, stdout,
    stderr without the probe's line)."""
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {json.dumps(json.dumps(HEAVY))}\n{PROBE}", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "EGRESSGUARD_HOME": str(home), **env})
    head, _, tail = done.stderr.rpartition("\nLOADED ")
    found = json.loads(tail)
    return found["code"], found["heavy"], done.stdout, head


@pytest.mark.parametrize("args", [["--help"], [], ["--version"], ["nosuchcommand"]])
def test_root_help_version_and_typos_load_no_command_area(tmp_path: Path,
                                                          args: list[str]) -> None:
    code, heavy, _, _ = probe(tmp_path, *args)
    assert heavy == [], f"egressguard {' '.join(args)} imported {heavy}"
    assert code == (0 if args in (["--help"], ["--version"]) else 2)


def test_root_help_lists_every_command_with_its_summary(tmp_path: Path) -> None:
    _, _, out, _ = probe(tmp_path, "--help", COLUMNS="200")
    for name in AREAS:
        assert name in out
    assert "Decide one outbound call." in out


def test_cluster_update_through_the_api_loads_neither_the_store_nor_the_web_stack(
        tmp_path: Path) -> None:
    # Nothing listens on port 1: the command fails fast, after its imports are done.
    code, heavy, _, err = probe(tmp_path, "cluster", "update", "--add-allowed-fqdn",
                                "a.example.com", "--api", "http://127.0.0.1:1",
                                "--token", "t", "-o", "json")
    assert code == 2
    assert err.startswith("error: cannot reach the API at http://127.0.0.1:1")
    assert heavy == [], heavy


def test_cluster_update_on_the_store_does_not_load_the_web_stack(tmp_path: Path) -> None:
    code, heavy, out, err = probe(tmp_path, "cluster", "update", "--add-allowed-fqdn",
                                  "a.example.com", "-o", "json")
    assert code == 0, err
    assert "a.example.com" in json.loads(out)["properties"]["allowedFqdnList"]
    assert not {"fastapi", "starlette", "uvicorn"} & set(heavy), heavy


def test_a_store_already_at_head_is_opened_without_alembic(tmp_path: Path) -> None:
    assert probe(tmp_path, "cluster", "list")[0] == 0  # creates and migrates the store
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom egressguard.cli.main import main\n"
         "try:\n    main(['cluster', 'list', '-o', 'json'])\nexcept SystemExit:\n    pass\n"
         "print('alembic' in sys.modules, file=sys.stderr)"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "EGRESSGUARD_HOME": str(tmp_path)})
    assert json.loads(done.stdout)[0]["cluster"] == "default"
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_the_root_summaries_are_the_commands_own_first_lines() -> None:
    # The root lists stand-ins (the areas are not imported for --help); they must not
    # drift from the real commands. A new command: add it to AREAS and SUMMARIES.
    root = typer.main.get_command(build_app())
    real = {name: cmd.get_short_help_str(limit=300)
            for name, cmd in root.commands.items()}  # type: ignore[attr-defined]
    assert set(real) == set(AREAS) == set(SUMMARIES)
    assert real == SUMMARIES


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    code, _, out, _ = probe(tmp_path, "--version")
    assert code == 0
    assert out.strip() == f"egressguard {version('egressguard')}"


@pytest.mark.parametrize(("words", "cword", "expected"), [
    ("egressguard clu", "1", "cluster"),
    ("egressguard cluster sh", "2", "show"),
    ("egressguard cluster show -o ", "4", "yaml"),
])
def test_bash_completion_completes_commands_and_option_values(
        tmp_path: Path, words: str, cword: str, expected: str) -> None:
    code, _, out, _ = probe(tmp_path, _EGRESSGUARD_COMPLETE="complete_bash",
                            COMP_WORDS=words, COMP_CWORD=cword)
    assert code == 0
    assert expected in out.split()


@pytest.mark.parametrize(("args", "line"), [
    (["cluster", "show", "--bogus"],
     "error: No such option: --bogus (hint: see `egressguard cluster show --help`)"),
    (["cluster", "list", "-o", "xml"],
     "error: Invalid value for '--output' / '-o': 'xml' is not one of 'table', 'wide', "
     "'json', 'yaml'. (hint: see `egressguard cluster list --help`)"),
    (["clustr"],
     "error: No such command 'clustr'. Did you mean 'cluster'? "
     "(hint: see `egressguard --help`)"),
])
def test_a_usage_error_is_one_line_with_a_help_hint_and_exit_2(
        tmp_path: Path, args: list[str], line: str) -> None:
    code, _, out, err = probe(tmp_path, *args)
    assert code == 2
    assert err.strip().splitlines() == [line]
    assert "Traceback" not in err + out
