"""Property-based run against the OpenAPI document: no input makes the API answer 5xx.

Bounded (a few examples per operation) so that it stays well under a minute. The store is
a real SQLite file in a temporary directory created at import (schemathesis needs the
schema when the tests are collected).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from egressguard.control.api import create_app
from egressguard.store import Store

_DIR = Path(tempfile.mkdtemp(prefix="eg-schemathesis-"))
_STORE = Store(f"sqlite:///{_DIR / 'egressguard.db'}")
_TOKEN = _STORE.create_token("fuzz", "admin", "test")[0]
atexit.register(lambda: (_STORE.close(), shutil.rmtree(_DIR, ignore_errors=True)))

# Only the control plane's own routes: other areas' routers have their own tests.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_STORE, include_optional_routers=False))


@pytest.mark.timeout(120)
@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {_TOKEN}"},
                           checks=[not_a_server_error])
