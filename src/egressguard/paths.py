"""Where egressguard keeps its files: the data home of `egressguard.config` (never the
working directory), kept private.

The home holds the embedded store, the audit key and imported catalogs: it is created
0700 and its files 0600. One that an older version (or a careless copy) left readable by
others is fixed when it is opened, with one warning line, instead of being refused: the
operator learns of it and nothing stops.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from egressguard import config

log = logging.getLogger("egressguard")
_checked: set[str] = set()


def data_home() -> Path:
    """The data directory (created 0700 on first use); holds the embedded store and keys."""
    home = Path(config.current().home.value or "")
    if str(home) not in _checked or not home.is_dir():
        _make_private_home(home)
        _checked.add(str(home))
    return home


def default_store_url() -> str:
    """The store every command uses unless told otherwise: `--store`/`$EGRESSGUARD_STORE`,
    the config file's `store`, else the embedded SQLite file inside the data home."""
    store = config.current().store
    if store.source.startswith("home"):
        data_home()  # create it (privately) before SQLite creates the file inside
    assert store.value is not None
    return store.value


# Files whose readers refuse them when others can read them, instead of quietly hiding
# them again: a master key that was exposed must be replaced, not re-protected.
REFUSED_IF_EXPOSED = frozenset({"master.key"})


def _make_private_home(home: Path) -> None:
    old = os.umask(0o077)
    try:
        home.mkdir(parents=True, exist_ok=True)
    finally:
        os.umask(old)
    fixed: list[str] = []
    try:
        mode = stat.S_IMODE(home.stat().st_mode)
        if mode & 0o077:
            os.chmod(home, mode & 0o700)
            fixed.append(f"{home} was {mode:04o}")
        for entry in os.scandir(home):
            if entry.name in REFUSED_IF_EXPOSED:
                continue  # its loader refuses it: an exposed master key must be replaced
            if entry.is_file(follow_symlinks=False):
                was = _make_private_file(Path(entry.path), warn=False)
                if was is not None:
                    fixed.append(f"{entry.name} was {was:04o}")
    except OSError as exc:  # e.g. a home owned by another user: say so, do not stop
        log.warning("egressguard: cannot make the data home %s private: %s", home,
                    exc.strerror or exc)
        return
    if fixed:
        log.warning("egressguard: made the data home private (0700, files 0600): %s",
                    "; ".join(fixed))


def _make_private_file(path: Path, *, warn: bool = True) -> int | None:
    """Drop group and other access from `path`; return the old mode if it had any."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    os.chmod(path, mode & 0o700)
    if warn:
        log.warning("egressguard: made %s private (was %04o, now %04o)", path, mode,
                    mode & 0o700)
    return mode


def private_sqlite_file(path: Path) -> None:
    """Before SQLite opens `path`: create it 0600 if absent (SQLite gives its -wal and -shm
    files the database file's mode), or make an existing one and its companions private."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _make_private_file(p)
