from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest

from egressguard.audit.events import DecisionEvent
from tests.gateway.conftest import echo, upstream  # the gateway tests' upstream servers

__all__ = ["audit_key", "echo", "event", "upstream"]


@pytest.fixture
def audit_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bytes:
    key = os.urandom(32)
    monkeypatch.setenv("EGRESSGUARD_AUDIT_KEY", base64.b64encode(key).decode())
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    return key


def event(**changes: Any) -> DecisionEvent:
    base: dict[str, Any] = dict(
        time=time.time(), cluster="default", kind="connect", host="api.example.com",
        port=443, verdict="allow", permitted=True, layer="application",
        rule="application:apps/api", reason="api.example.com:443 allowed",
        policy_version="3", connection_id="c1", client_address="10.1.2.3",
        client_identity="build-agent", method="CONNECT", path="")
    base.update(changes)
    return DecisionEvent(**base)
