"""Where settings come from (`egressguard.config.resolve`, from tables) and what
`egressguard config show` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egressguard.config import ConfigError, Settings, parse_config, resolve

EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
USER = Path("/u")
CWD = Path("/work/here")
XDG_FILE = Path("/xdg/egressguard/config.yaml")
USER_FILE = USER / ".config" / "egressguard" / "config.yaml"
SYSTEM_FILE = Path("/etc/egressguard/config.yaml")


def settings(env: dict[str, str], files: dict[Path, str] | None = None, *,
             root: bool = False, flag: str | None = None) -> Settings:
    files = files or {}
    return resolve(env, read=files.get, user_home=USER, is_root=root, cwd=CWD, home_flag=flag)


def home_of(s: Settings) -> tuple[str | None, str]:
    return s.home.value, s.home.source


@pytest.mark.parametrize(("env", "files", "root", "flag", "home"), [
    ({}, {}, False, None, ("/u/.local/share/egressguard", "default")),
    ({}, {}, True, None, ("/var/lib/egressguard", "default (root)")),
    ({"XDG_DATA_HOME": "/d"}, {}, False, None, ("/d/egressguard", "default")),
    ({}, {USER_FILE: "home: /srv/eg\n"}, False, None, ("/srv/eg", f"config {USER_FILE}")),
    ({"XDG_CONFIG_HOME": "/xdg"}, {XDG_FILE: "home: /x\n", USER_FILE: "home: /wrong\n"},
     False, None, ("/x", f"config {XDG_FILE}")),
    ({}, {SYSTEM_FILE: "home: /sys\n"}, True, None, ("/sys", f"config {SYSTEM_FILE}")),
    # a user's file replaces the system's (it is not merged with it)
    ({}, {USER_FILE: "cluster: c\n", SYSTEM_FILE: "home: /sys\n"}, True, None,
     ("/var/lib/egressguard", "default (root)")),
    # relative paths: the file's folder for the file, the working directory otherwise
    ({}, {SYSTEM_FILE: "home: data\n"}, False, None,
     ("/etc/egressguard/data", f"config {SYSTEM_FILE}")),
    ({"EGRESSGUARD_HOME": "rel"}, {}, False, None, ("/work/here/rel", "$EGRESSGUARD_HOME")),
    ({"EGRESSGUARD_HOME": "/e"}, {USER_FILE: "home: /f\n"}, False, None,
     ("/e", "$EGRESSGUARD_HOME")),
    ({"EGRESSGUARD_HOME": "/e"}, {USER_FILE: "home: /f\n"}, False, "/flag",
     ("/flag", "--home")),
    ({"EGRESSGUARD_CONFIG": "/my.yaml"}, {Path("/my.yaml"): "home: /m\n",
                                          USER_FILE: "home: /f\n"}, False, None,
     ("/m", "config /my.yaml")),
])
def test_data_home_precedence_never_depends_on_the_working_directory_by_default(
        env: dict[str, str], files: dict[Path, str], root: bool, flag: str | None,
        home: tuple[str, str]) -> None:
    assert home_of(settings(env, files, root=root, flag=flag)) == home


@pytest.mark.parametrize(("env", "file", "store", "cluster", "api"), [
    ({}, "", ("sqlite:////h/egressguard.db", "home ($EGRESSGUARD_HOME)"),
     ("default", "default"), (None, "default")),
    ({}, "store: postgresql://db/eg\ncluster: prod\napi: http://127.0.0.1:8080\n",
     ("postgresql://db/eg", "config"), ("prod", "config"), ("http://127.0.0.1:8080", "config")),
    ({"EGRESSGUARD_STORE": "sqlite:////s.db", "EGRESSGUARD_CLUSTER": "ci",
      "EGRESSGUARD_API": "http://a"}, "store: postgresql://db/eg\ncluster: prod\n",
     ("sqlite:////s.db", "$EGRESSGUARD_STORE"), ("ci", "$EGRESSGUARD_CLUSTER"),
     ("http://a", "$EGRESSGUARD_API")),
])
def test_store_cluster_and_api_come_from_env_then_file_then_home(
        env: dict[str, str], file: str, store: tuple[str, str], cluster: tuple[str, str],
        api: tuple[str | None, str]) -> None:
    s = settings({"EGRESSGUARD_HOME": "/h", **env}, {USER_FILE: file})
    got = [(x.value, x.source.split(" ")[0] if x.source.startswith("config") else x.source)
           for x in (s.store, s.cluster, s.api)]
    assert got == [store, cluster, api]
    assert s.config_file == USER_FILE


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "expected a mapping"),
    ("stor: x\n", "unknown key 'stor'"),
    ("cluster: [a]\n", "cluster must be a non-empty string"),
    ("cluster: ''\n", "non-empty string"),
    ("home: true\n", "non-empty string"),
    ("home: [\n", "not valid YAML"),
    ("cluster: " + "a" * 70_000, "larger than"),
])
def test_bad_config_file_is_an_error_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(text, "/etc/egressguard/config.yaml")
    assert str(info.value).startswith("/etc/egressguard/config.yaml: ")


def test_empty_config_file_sets_nothing() -> None:
    assert parse_config("", "f") == {} and parse_config("# only a comment\n", "f") == {}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSGUARD_")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), **extra}


def test_config_show_json_tells_each_value_and_its_source(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "egressguard" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("home: ../../home\nstore: postgresql://eg:s3cret@127.0.0.1/eg\n"
                   "cluster: prod\n")
    out = subprocess.run([EGRESSGUARD, "config", "show", "-o", "json"], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    where = f"config {cfg.resolve()}"
    assert shown["config_file"] == str(cfg.resolve())
    assert shown["home"] == {"value": str((tmp_path / "home").resolve()), "source": where}
    assert shown["store"] == {"value": "postgresql://eg:***@127.0.0.1/eg", "source": where}
    assert shown["cluster"] == {"value": "prod", "source": where}
    assert shown["api"] == {"value": None, "source": "default"}

    flagged = subprocess.run([EGRESSGUARD, "--home", "elsewhere", "config", "show"],
                             cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                             text=True, timeout=60)
    assert f"home         {tmp_path / 'elsewhere'}  [--home]" in flagged.stdout


def test_a_broken_config_file_stops_every_command_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "egressguard" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("stroe: sqlite:////x.db\n")
    out = subprocess.run([EGRESSGUARD, "cluster", "list"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "unknown key 'stroe'" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_test_suite_never_uses_the_real_data_home_or_config(hermetic_home: Path) -> None:
    from egressguard import config, paths

    settings = config.current()
    assert settings.home.value == str(hermetic_home) and settings.config_file is None
    assert paths.data_home() == hermetic_home
    assert not str(hermetic_home).startswith(("/var/lib/egressguard", str(Path.home())))
