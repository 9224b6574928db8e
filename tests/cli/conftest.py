"""What the serve tests share: a plain HTTP upstream on loopback (the process under
test is started with `tests/cli/serving.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.conftest import Server, start_http


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_http()
    yield server
    server.stop()
