"""The README's Deploy section and docs/deploy.md give commands that work: every
`egressguard` line names a real command with real flags, every path they name exists,
and the policy files they validate and apply do validate and apply (on SQLite and
PostgreSQL)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import app
from tests.deploy.conftest import command_at

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def shell_lines(markdown: str) -> list[str]:
    """Commands in the ```bash blocks, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def deploy_docs() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy\n", 1)[1].split("\n## ", 1)[0]
    return shell_lines(section) + shell_lines((ROOT / "docs" / "deploy.md").read_text())


def _command(argv: list[str]) -> tuple[Any, list[str]]:
    command: Any = command_at(())
    rest = argv[1:]
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_every_egressguard_command_in_the_deploy_docs_exists() -> None:
    commands = [shlex.split(line) for line in deploy_docs() if line.startswith("egressguard ")]
    assert len(commands) >= 3
    for argv in commands:
        command, rest = _command(argv)
        assert not hasattr(command, "commands"), argv
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        flags = {a.split("=", 1)[0] for a in rest if a.startswith("-")}
        assert flags <= options, (argv, flags - options)


def test_every_path_in_the_deploy_docs_exists() -> None:
    paths = {word for line in deploy_docs() for word in shlex.split(line)
             if word.startswith("deploy/")}
    assert len(paths) >= 5
    for path in paths:
        assert list(ROOT.glob(path)), path  # a glob (egressguard-*.service) matches files
    for line in deploy_docs():
        if line.startswith("kubectl") and ("kustomize" in line or " -k " in line):
            target = next(w for w in shlex.split(line) if w.startswith("deploy/"))
            assert (ROOT / target / "kustomization.yaml").is_file(), target


def test_the_documented_gitops_steps_work(store_url: str) -> None:
    for policy in sorted((ROOT / "deploy" / "kubernetes").rglob("policy.yaml")):
        result = runner.invoke(app, ["validate", "-f", str(policy)])
        assert result.exit_code == 0, result.output
    policy = str(ROOT / "deploy" / "kubernetes" / "overlays" / "prod" / "policy.yaml")
    result = runner.invoke(app, ["apply", "-f", policy, "--cluster", "prod", "--dry-run",
                                 "--diff", "--store", store_url])
    assert result.exit_code == 0 and "would create version 1" in result.output
    for expected in ("cluster prod: version 1", "cluster prod: unchanged (version 1)"):
        result = runner.invoke(app, ["apply", "-f", policy, "--cluster", "prod",
                                     "--store", store_url])
        assert (result.exit_code, result.output.strip()) == (0, expected)


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_the_docs_say_the_image_is_not_built_here(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert "no container engine" in text
