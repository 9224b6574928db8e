"""The recommender proposes least privilege per workload identity, from records whose
identity is sealed in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.cli.main import app
from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import load_policy
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(120)


def test_each_identity_is_proposed_only_what_it_used(sqlite_url: str, audit_key: bytes,
                                                     tmp_path: Path) -> None:
    with AuditLog(sqlite_url) as log:
        for e in (event(host="api.github.com", client_identity="ci"),
                  event(host="pypi.org", client_identity="ci"),
                  event(host="pypi.org", client_identity="web"),
                  event(host="shop.example", client_identity="web"),
                  event(host="status.example", client_identity="web"),
                  event(host="status.example", client_identity="")):
            log.emit(e)
        log.flush()
    out = tmp_path / "policy.yaml"
    result = CliRunner().invoke(app, ["recommend", "--since", "1d", "--store", sqlite_url,
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "also used by anonymous callers (besides web)" in text
    snapshot = compile_policy(load_policy(out))

    def allowed(host: str, who: str) -> bool:
        return snapshot.decide(Request(kind=Kind.CONNECT, host=host, port=443,
                                       identity=who)).allowed

    assert allowed("api.github.com", "ci") and not allowed("api.github.com", "web")
    assert allowed("pypi.org", "ci") and allowed("pypi.org", "web")
    assert not allowed("pypi.org", "") and not allowed("pypi.org", "other")
    assert allowed("shop.example", "web") and not allowed("shop.example", "ci")
    assert allowed("status.example", "")  # an anonymous caller used it: unscoped
