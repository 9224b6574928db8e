"""What a user reads cites public documents by title, never the project's internal names
for them ("seed 003"): the README, every command's help, generated policies, the catalog
listing and the analysis findings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from egressguard.analysis import CHECKS
from egressguard.cli.main import build_app

JARGON = re.compile(r"\bseeds?\b", re.IGNORECASE)
README = Path(__file__).resolve().parents[2] / "README.md"
SOURCES = Path(__file__).resolve().parents[2] / "src" / "egressguard"


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_the_readme_names_no_seed() -> None:
    text = README.read_text().replace("(docs/seed-recipes.md)", "")  # a file name, a link
    assert JARGON.findall(text) == []


def test_no_command_help_names_a_seed() -> None:
    root = typer.main.get_command(build_app())
    for path, cmd in _commands(root):
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        for text in texts:
            assert not JARGON.search(text), (path, text)


@pytest.mark.parametrize("args", [
    ["profile", "aks", "--region", "westeurope", "--features", "gpu,monitor"],
    ["profile", "aml", "--region", "westeurope", "--storage-account", "mywsstore",
     "--features", "curated-environments,studio"],
])
def test_generated_policies_cite_documents_by_title(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     args: list[str]) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path))
    done = CliRunner().invoke(build_app(), args)
    assert done.exit_code == 0, done.output
    assert JARGON.findall(done.stdout) == []
    assert "# source: \"" in done.stdout


def test_the_catalog_listing_and_the_finding_texts_name_no_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path))
    listed = CliRunner().invoke(build_app(), ["catalog", "list", "-o", "json"])
    sources = [c["source"] for c in json.loads(listed.stdout)["catalogs"]]
    assert all(s.startswith("Microsoft Learn: ") for s in sources), sources
    assert not JARGON.search(json.dumps(CHECKS))
    for module in ("exposure.py", "posture.py", "analyzer.py"):
        # the strings findings are made of
        strings = re.findall(r'"([^"\n]*)"', (SOURCES / "analysis" / module).read_text())
        assert [s for s in strings if JARGON.search(s)] == [], module
