"""Stores over the shared database fixtures (`tests/conftest.py`) for the control-plane
tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egressguard.store import Store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = Store(store_url)
    yield st
    st.close()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    st = Store(sqlite_url)
    yield st
    st.close()
