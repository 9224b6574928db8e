"""A real SQLite store and audit log holding a known set of records, and a client."""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from egressguard.audit.events import DecisionEvent
from egressguard.audit.log import AuditLog
from egressguard.control.api import create_app
from egressguard.policy import load_policy_text
from egressguard.store import Store

ROLES = ("admin", "operator", "viewer", "auditor")
HOSTILE = "<script>alert(1)</script>"

POLICY = """
restrict_outbound_network_access: true
allowed_fqdn_list: ["*.blob.core.windows.net", "api.example.com"]
application_rule_collections:
  - name: apps
    priority: 200
    rules:
      - {name: web, targets: ["*.github.com"], protocols: ["https:443"]}
      - {name: pypi, targets: [pypi.org, files.pythonhosted.org], protocols: ["https:443"]}
network_rule_collections:
  - name: net
    priority: 300
    rules:
      - {name: dns, destinations: [10.0.0.53], protocols: [udp], ports: ["53"]}
"""


def event(**changes: Any) -> DecisionEvent:
    base: dict[str, Any] = dict(
        time=time.time(), cluster="default", kind="connect", host="api.example.com",
        port=443, verdict="allow", permitted=True, layer="application",
        rule="application:apps/web", reason="allowed", policy_version="2")
    base.update(changes)
    return DecisionEvent(**base)


def records(now: float) -> list[DecisionEvent]:
    """The log the tests read: decisions of every outcome, close events with bytes, and
    records the panels must leave out (older than an hour, another cluster)."""
    out = [event(time=now - 60 - i, host=f"h{i}.github.com") for i in range(7)]
    out += [event(time=now - 30 - i, host="api.example.com", layer="allowed_fqdn",
                  rule="allowed_fqdn:api.example.com") for i in range(3)]
    out += [event(time=now - 20 - i, host=f"x{i}.evil.net", verdict="deny", permitted=False,
                  layer="default", rule="default:deny", reason=f"x{i}.evil.net not allowed")
            for i in range(4)]
    out += [event(time=now - 10, host="y.evil.net", verdict="deny", permitted=True,
                  layer="default", rule="default:deny", reason="report-only")]
    out += [event(time=now - 5, host=f"{HOSTILE}.evil.net", verdict="deny",
                  permitted=False, layer="application", rule=f"application:{HOSTILE}",
                  reason=f"<img src=x onerror=alert(2)> {HOSTILE}", port=8443)]
    # close events: bytes sent per destination
    out += [event(time=now - 40, phase="close", host="big.blob.core.windows.net",
                  bytes_up=5_000_000, bytes_down=1_000, connection_id=f"b{i}")
            for i in range(2)]
    out += [event(time=now - 40, phase="close", host="api.example.com", bytes_up=2_048,
                  bytes_down=900_000)]
    # outside the window / other cluster: never counted
    out += [event(time=now - 7200, verdict="deny", permitted=False, host="old.evil.net",
                  layer="default", rule="default:deny"),
            event(time=now - 7200, phase="close", host="old.blob.core.windows.net",
                  bytes_up=9_999_999_999),
            event(time=now - 50, cluster="other", host="other.example.com"),
            event(time=now - 50, cluster="other", phase="close", host="other.example.com",
                  bytes_up=8_888_888_888)]
    return out


@dataclass
class Env:
    client: TestClient
    store: Store
    tokens: dict[str, str]
    events: list[DecisionEvent]
    now: float
    log: AuditLog

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@contextlib.contextmanager
def make_env(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The store at `url` holding POLICY as version 2, the log holding `records`, a token
    per role and a client of the app."""
    monkeypatch.setenv("EGRESSGUARD_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    now = time.time()
    with Store(url) as store, AuditLog(url) as log:
        store.commit("default", load_policy_text(POLICY, "test"), "alice",
                     f"restrict <b>{HOSTILE}</b>")
        written = records(now)
        for e in written:
            log.emit(e)
        log.flush()
        tokens = {role: store.create_token(role, role, "test")[0] for role in ROLES}
        with TestClient(create_app(store)) as client:
            yield Env(client, store, tokens, written, now, log)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    with make_env(f"sqlite:///{tmp_path / 'egressguard.db'}", tmp_path, monkeypatch) as e:
        yield e


@pytest.fixture
def store_env(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Env]:
    """`env` on SQLite and on PostgreSQL (for what depends on the database's SQL)."""
    with make_env(store_url, tmp_path, monkeypatch) as e:
        yield e


class Sections(HTMLParser):
    """Text of every table cell, per `<section id=...>`: what a reader of the page sees."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.text: dict[str, str] = {}
        self._section = ""
        self._cell: list[str] | None = None
        self.source = page
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
            self.rows.setdefault(self._section, [])
            self.text.setdefault(self._section, "")
        elif tag == "tr" and self._section:
            self.rows[self._section].append([])
        elif tag in ("td", "th") and self._section:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self._section][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "section":
            self._section = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.text[self._section] += data
