"""Where egressguard keeps its files: `$EGRESSGUARD_HOME`, default `./egressguard-data`."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """The data directory (created on first use); holds the embedded store and keys."""
    home = Path(os.environ.get("EGRESSGUARD_HOME", "egressguard-data"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_store_url() -> str:
    """The embedded default store: one SQLite file inside the data directory."""
    return f"sqlite:///{(data_home() / 'egressguard.db').resolve()}"
