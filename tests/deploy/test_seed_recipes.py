"""The seeds' recipes run exactly as docs/seed-recipes.md and the README state them, offline,
in a temporary home (issue 15, item 7): each `bash` line runs, `# exit N` lines exit N
(`check`: 0 allowed, 1 denied), `# output has: TEXT` lines print TEXT."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import app

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
FIXTURE_TAGS = ROOT / "tests" / "catalog" / "fixtures" / "ServiceTags_Public_fixture.json"
runner = CliRunner()


@dataclass(frozen=True)
class Step:
    line: str
    exit_code: int = 0
    output_has: str = ""


def steps(markdown: str) -> list[Step]:
    """The commands of the ```bash blocks with what each must do."""
    found: list[Step] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for raw in block.replace("\\\n", " ").splitlines():
            line, _, comment = raw.partition(" # ")
            line, comment = line.strip(), comment.strip()
            if not line or line.startswith("#"):
                continue
            code = re.match(r"exit (\d)", comment)
            has = comment.removeprefix("output has:").strip() \
                if comment.startswith("output has:") else ""
            found.append(Step(line, int(code.group(1)) if code else 0, has))
    return found


def files(markdown: str) -> dict[str, str]:
    """The files the doc gives (a code block after `<!-- file: NAME -->`)."""
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", markdown, re.S))


def run_recipe(markdown: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.chdir(workdir)
    for name, text in files(markdown).items():
        (workdir / name).write_text(text)
    done = 0
    for step in steps(markdown):
        argv = shlex.split(step.line)
        assert argv[0] == "egressguard", step.line
        if argv[1] == "serve":
            continue  # long-running: its own tests start it
        result = runner.invoke(app, argv[1:])
        assert result.exit_code == step.exit_code, (step.line, result.output)
        assert step.output_has in result.output, (step.line, result.output)
        done += 1
    return done


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EGRESSGUARD_STORE", raising=False)
    monkeypatch.delenv("EGRESSGUARD_CLUSTER", raising=False)
    monkeypatch.delenv("EGRESSGUARD_API", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(FIXTURE_TAGS, work / "ServiceTags_Public.json")  # the weekly download
    return work


def test_every_recipe_in_seed_recipes_md_works_as_written(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "seed-recipes.md").read_text()
    assert {s.exit_code for s in steps(text)} == {0, 1}, "the doc checks no denial"
    assert run_recipe(text, workdir, monkeypatch) >= 30


def test_the_readme_platform_recipe_works_as_written(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From a platform's requirements to a running gateway\n",
                           1)[1].split("\n## ", 1)[0]
    assert run_recipe(section, workdir, monkeypatch) >= 6


def test_a_wrong_verdict_in_the_doc_fails_the_recipe(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("```bash\negressguard profile aml --region westeurope --storage-account "
            "mywsstore --out aml.yaml\negressguard check https://attackerstore.blob.core."
            "windows.net/ --policy aml.yaml    # exit 0\n```\n")
    with pytest.raises(AssertionError, match="attackerstore"):
        run_recipe(text, workdir, monkeypatch)
