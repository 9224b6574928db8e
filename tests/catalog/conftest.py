from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_TAGS = Path(__file__).parent / "fixtures" / "ServiceTags_Public_fixture.json"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private EGRESSGUARD_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("EGRESSGUARD_HOME", str(path))
    return path


@pytest.fixture
def imported_tags(home: Path) -> Path:
    from egressguard.catalog.servicetags import import_file

    stored, _ = import_file(FIXTURE_TAGS)
    return stored
