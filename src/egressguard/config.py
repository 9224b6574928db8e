"""Where egressguard's settings come from: one resolution, used by every command.

A setting is taken from the first of these that gives it:

1. the command line (`--home` on `egressguard`; `--store`, `--cluster`, `--api` on a command),
2. the environment (`EGRESSGUARD_HOME`, `EGRESSGUARD_STORE`, `EGRESSGUARD_CLUSTER`,
   `EGRESSGUARD_API`, `EGRESSGUARD_TOKEN_FILE`, `EGRESSGUARD_CA_FILE`),
3. the config file: `$EGRESSGUARD_CONFIG` if set, else the first that exists of
   `$XDG_CONFIG_HOME/egressguard/config.yaml` (default `~/.config/...`) and
   `/etc/egressguard/config.yaml` (only one file is read: a user's file replaces the
   system's, it does not merge with it),
4. the built-in default: home `$XDG_DATA_HOME/egressguard` (default
   `~/.local/share/egressguard`; `/var/lib/egressguard` as root), store the SQLite file
   `egressguard.db` in the home, cluster `default`, no API (commands use the store).

`api` (the server), `token_file` (where its token is; the token itself is never written
here) and `ca_file` (the certificate to trust for an HTTPS server) are what
`egressguard login` writes (`write_user_config`); with `api` set, the control-plane
commands go through the server (`control.client`).

Nothing depends on the working directory: relative paths are made absolute where they are
given (the config file's relative to the file's folder). `resolve` is pure (the caller
hands it the environment and a file reader), so the precedence is tested from tables;
`current` applies it to this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from egressguard.errors import InputError

ENV_HOME = "EGRESSGUARD_HOME"
ENV_CONFIG = "EGRESSGUARD_CONFIG"
ENV_STORE = "EGRESSGUARD_STORE"
ENV_CLUSTER = "EGRESSGUARD_CLUSTER"
ENV_API = "EGRESSGUARD_API"
ENV_TOKEN_FILE = "EGRESSGUARD_TOKEN_FILE"
ENV_CA_FILE = "EGRESSGUARD_CA_FILE"
KEYS = ("home", "store", "cluster", "api", "token_file", "ca_file")
PATH_KEYS = ("token_file", "ca_file")  # relative values: to the config file's folder
SYSTEM_CONFIG = Path("/etc/egressguard/config.yaml")
STORE_FILE = "egressguard.db"
DEFAULT_CLUSTER = "default"
MAX_CONFIG_BYTES = 64 * 1024


class ConfigError(InputError, ValueError):
    """A config file that cannot be used (unreadable, not a mapping, unknown key)."""


@dataclass(frozen=True)
class Setting:
    """One value in effect and where it came from (e.g. `$EGRESSGUARD_STORE`)."""

    value: str | None
    source: str


@dataclass(frozen=True)
class Settings:
    config_file: Path | None
    home: Setting
    store: Setting
    cluster: Setting
    api: Setting
    token_file: Setting
    ca_file: Setting

    def as_dict(self) -> dict[str, Any]:
        return {"config_file": str(self.config_file) if self.config_file else None,
                **{k: {"value": getattr(self, k).value, "source": getattr(self, k).source}
                   for k in KEYS}}


def config_candidates(env: Mapping[str, str], user_home: Path) -> list[Path]:
    """The config files looked for, in order (the first that exists is read)."""
    if env.get(ENV_CONFIG):
        return [Path(env[ENV_CONFIG])]
    xdg = env.get("XDG_CONFIG_HOME") or str(user_home / ".config")
    return [Path(xdg) / "egressguard" / "config.yaml", SYSTEM_CONFIG]


def parse_config(text: str, source: str) -> dict[str, str]:
    """The settings of one config file: a YAML mapping of `KEYS` to strings."""
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {', '.join(KEYS)}")
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; expected {', '.join(KEYS)}")
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            raise ConfigError(f"{source}: {key} must be a non-empty string")
        out[key] = str(value)
    return out


def _absolute(path: str, base: Path) -> str:
    return str((base / Path(path).expanduser()).resolve())


def resolve(env: Mapping[str, str], *, read: Callable[[Path], str | None], user_home: Path,
            is_root: bool, cwd: Path, home_flag: str | None = None) -> Settings:
    """The settings in effect. `read(path)` returns a file's text, or None if it is absent."""
    config_file: Path | None = None
    file: dict[str, str] = {}
    for candidate in config_candidates(env, user_home):
        text = read(candidate)
        if text is not None:
            config_file = candidate.resolve() if candidate.is_absolute() else \
                (cwd / candidate).resolve()
            file = parse_config(text, str(config_file))
            break
    where = f"config {config_file}"

    if home_flag:
        home = Setting(_absolute(home_flag, cwd), "--home")
    elif env.get(ENV_HOME):
        home = Setting(_absolute(env[ENV_HOME], cwd), f"${ENV_HOME}")
    elif "home" in file:
        assert config_file is not None
        home = Setting(_absolute(file["home"], config_file.parent), where)
    elif is_root:
        home = Setting("/var/lib/egressguard", "default (root)")
    else:
        data = env.get("XDG_DATA_HOME") or str(user_home / ".local" / "share")
        home = Setting(str(Path(data) / "egressguard"), "default")

    def pick(key: str, env_name: str, default: str | None) -> Setting:
        if env.get(env_name):
            value = env[env_name]
            return Setting(_absolute(value, cwd) if key in PATH_KEYS else value,
                           f"${env_name}")
        if key in file:
            assert config_file is not None
            value = file[key]
            return Setting(_absolute(value, config_file.parent) if key in PATH_KEYS
                           else value, where)
        return Setting(default, "default")

    store = pick("store", ENV_STORE, None)
    if store.value is None:
        assert home.value is not None
        store = Setting(f"sqlite:///{Path(home.value) / STORE_FILE}", f"home ({home.source})")
    return Settings(config_file, home, store, pick("cluster", ENV_CLUSTER, DEFAULT_CLUSTER),
                    pick("api", ENV_API, None), pick("token_file", ENV_TOKEN_FILE, None),
                    pick("ca_file", ENV_CA_FILE, None))


# -- this process ----------------------------------------------------------------------

_home_flag: str | None = None


def set_home_flag(path: str | None) -> None:
    """Record `egressguard --home PATH` (and pass it on to child processes)."""
    global _home_flag
    _home_flag = path
    if path:
        os.environ[ENV_HOME] = _absolute(path, Path.cwd())


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return data.decode("utf-8", "replace")


def current() -> Settings:
    """The settings in effect for this process."""
    geteuid = getattr(os, "geteuid", None)
    try:
        user_home = Path.home()
    except RuntimeError:  # no $HOME and no passwd entry
        user_home = Path("/")
    try:
        cwd = Path.cwd()
    except OSError:  # the working directory was removed
        cwd = Path("/")
    return resolve(os.environ, read=_read, user_home=user_home, cwd=cwd,
                   is_root=geteuid is not None and geteuid() == 0, home_flag=_home_flag)


def cluster(given: str | None = None) -> str:
    """The cluster a command works on: `given` (its --cluster/--name), else configured."""
    return given or current().cluster.value or DEFAULT_CLUSTER


def user_config_file() -> Path:
    """The file `write_user_config` writes: `$EGRESSGUARD_CONFIG`, else the user's."""
    try:
        user_home = Path.home()
    except RuntimeError:
        user_home = Path("/")
    return config_candidates(os.environ, user_home)[0]


def write_user_config(changes: Mapping[str, str | None]) -> Path:
    """Set (or, with None, remove) keys in the user's config file, keeping the others;
    the file is created 0600 in a 0700 folder. Returns its path."""
    path = user_config_file()
    text = _read(path)
    data: dict[str, str] = parse_config(text, str(path)) if text is not None else {}
    for key, value in changes.items():
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}")
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# written by `egressguard login`; see `egressguard config show`\n")
        yaml.safe_dump(data, f, default_flow_style=False, sort_keys=True)
    os.replace(tmp, path)
    return path


def api_url(given: str | None = None) -> str | None:
    """The API a command talks to, if any: `given`, else configured."""
    return given or current().api.value
