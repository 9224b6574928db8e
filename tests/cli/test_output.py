"""Output conventions (kubectl's): `-o/--output table|wide|json|yaml` on every command that
prints data, `-o` never a file (`--out FILE`), `-f/--file` an input file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from egressguard.cli.main import build_app
from egressguard.cli.output import Format

# `logs -f` is kubectl's `logs -f`: follow.
F_EXCEPTIONS = {("logs",)}


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


ALL = _commands(typer.main.get_command(build_app()))


def _option(cmd: Any, flag: str) -> Any | None:
    return next((p for p in cmd.params if flag in getattr(p, "opts", [])), None)


def test_dash_o_is_always_the_output_format_never_a_file() -> None:
    with_o = [(path, _option(cmd, "-o")) for path, cmd in ALL if _option(cmd, "-o")]
    assert len(with_o) > 30
    for path, param in with_o:
        assert param.opts == ["--output", "-o"], path
        assert param.default == Format.TABLE, path


def test_files_written_are_named_with_out_and_read_with_f() -> None:
    for path, cmd in ALL:
        for param in cmd.params:
            opts = getattr(param, "opts", [])
            if "--out" in opts:
                assert opts == ["--out"], path
            if "-f" in opts and path not in F_EXCEPTIONS:
                assert "--file" in opts, (path, opts)


def test_every_output_option_is_the_one_format_choice() -> None:
    # Not `str` with a hand check (`cluster show -o yaml` printed the table).
    for path, cmd in ALL:
        param = _option(cmd, "--output")
        if param is not None:
            assert isinstance(param.default, Format), path


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path))
    app = build_app()

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    return invoke


def test_yaml_is_the_same_data_as_json(run: Any) -> None:
    run("cluster", "update", "--add-allowed-fqdn", "api.example.com")
    as_json = json.loads(run("cluster", "show", "-o", "json"))
    assert yaml.safe_load(run("cluster", "show", "-o", "yaml")) == as_json
    assert "api.example.com" in as_json["properties"]["allowedFqdnList"]
    listed = json.loads(run("cluster", "list", "--output", "JSON"))  # case-insensitive
    assert yaml.safe_load(run("cluster", "list", "-o", "yaml")) == listed


def test_wide_never_folds_a_long_value(run: Any) -> None:
    long_name = ".".join(f"label{i:02d}-long" for i in range(18)) + ".example.com"
    run("cluster", "update", "--add-allowed-fqdn", long_name)
    assert long_name in run("cluster", "show", "-o", "wide")
    assert long_name not in run("cluster", "show")  # the table folds it (240 columns)


def test_cluster_show_yaml_was_silently_ignored_now_it_is_yaml(run: Any) -> None:
    # The issue: `cluster show -o yaml` printed the table.
    shown = yaml.safe_load(run("cluster", "show", "-o", "yaml"))
    assert shown["name"] == "default"
    assert "┃" not in run("cluster", "show", "-o", "yaml")


def test_check_takes_dash_o_and_keeps_json_as_an_alias(run: Any, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("restrict_outbound_network_access: true\n"
                      "allowed_fqdn_list: [api.example.com]\n")
    app, runner = build_app(), CliRunner()
    by_o = runner.invoke(app, ["check", "https://api.example.com/", "-f", str(policy),
                               "-o", "json"])
    by_alias = runner.invoke(app, ["check", "https://api.example.com/", "--policy",
                                   str(policy), "--json"])
    assert by_o.exit_code == by_alias.exit_code == 0
    assert json.loads(by_o.stdout) == json.loads(by_alias.stdout)
    as_yaml = runner.invoke(app, ["check", "https://api.example.com/", "-f", str(policy),
                                  "-o", "yaml"])
    assert yaml.safe_load(as_yaml.stdout) == json.loads(by_o.stdout)


def test_catalog_and_config_take_yaml(run: Any) -> None:
    assert "fqdn_tags" in yaml.safe_load(run("catalog", "list", "-o", "yaml"))
    assert "store" in yaml.safe_load(run("config", "show", "-o", "yaml"))
