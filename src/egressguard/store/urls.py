"""Store URLs: `sqlite:///file.db` (default, embedded) or `postgresql://...` (shared)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

from egressguard.errors import InputError


class StoreURLError(InputError, ValueError):
    """A store URL egressguard cannot use."""


def normalize_url(raw: str) -> URL:
    """Map `postgres(ql)://` to the psycopg 3 driver; a bare path means a SQLite file."""
    text = raw.strip()
    if "://" not in text:
        text = f"sqlite:///{Path(text).resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if text.startswith(prefix):
            text = "postgresql+psycopg://" + text[len(prefix):]
    try:
        url = make_url(text)
    except Exception as exc:
        raise StoreURLError(f"invalid store URL {raw!r}: {exc}") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreURLError(f"unsupported store {url.get_backend_name()!r}: "
                            "use sqlite:///path or postgresql://...")
    if url.get_backend_name() == "postgresql" and url.drivername != "postgresql+psycopg":
        url = url.set(drivername="postgresql+psycopg")
    return url


def bus_key(url: URL) -> str:
    """A key naming one database, so that feeds and writers in one process meet."""
    return url.render_as_string(hide_password=True)
