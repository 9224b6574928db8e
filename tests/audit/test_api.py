"""GET /v1/audit: same filters and paging as the CLI; only auditors and admins."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egressguard.audit.log import AuditLog
from egressguard.control.api import create_app
from egressguard.store import Store
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(store_url: str, audit_key: bytes) -> Iterator[tuple[TestClient, dict[str, str]]]:
    now = time.time()
    with Store(store_url) as store, AuditLog(store_url) as log:
        for i in range(5):
            log.emit(event(time=now - 10 + i, host=f"h{i}.example.com", connection_id=str(i)))
        log.emit(event(time=now, host="x.blob.core.windows.net", verdict="deny",
                       permitted=False, path="/c?sig=S"))
        log.emit(event(time=now, host="y.evil.net", verdict="deny", permitted=True))
        log.flush()
        tokens = {role: store.create_token(role, role, "test")[0]
                  for role in ("auditor", "admin", "operator", "viewer")}
        with TestClient(create_app(store)) as client:
            yield client, tokens


def get(client: TestClient, token: str, **params: object) -> dict[str, object]:
    response = client.get("/v1/audit", params=params,
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_auditor_and_admin_read_others_are_refused(api: tuple[TestClient, dict[str, str]]
                                                   ) -> None:
    client, tokens = api
    for role in ("auditor", "admin"):
        assert len(get(client, tokens[role])["items"]) == 7  # type: ignore[arg-type]
    for role in ("operator", "viewer"):
        response = client.get("/v1/audit", headers={"Authorization": f"Bearer {tokens[role]}"})
        assert response.status_code == 403
    assert client.get("/v1/audit").status_code == 401


def test_filters_and_exact_records(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    [denied] = get(client, tokens["auditor"], verdict="deny")["items"]  # type: ignore[misc]
    assert denied["host"] == "x.blob.core.windows.net"
    assert denied["outcome"] == "deny" and denied["path"] == "/c?sig=S"
    assert denied["client_identity"] == "build-agent"
    [would] = get(client, tokens["auditor"], verdict="would-deny")["items"]  # type: ignore[misc]
    assert (would["host"], would["verdict"], would["permitted"]) == ("y.evil.net", "deny", True)
    hosts = [r["host"] for r in get(client, tokens["auditor"],  # type: ignore[attr-defined]
                                    dest="*.blob.core.windows.net")["items"]]
    assert hosts == ["x.blob.core.windows.net"]


def test_paging_walks_every_record_once(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = get(client, tokens["auditor"], **params)
        seen += [r["id"] for r in page["items"]]  # type: ignore[attr-defined]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 7
    newer = get(client, tokens["auditor"], after=seen[2])["items"]
    assert [r["id"] for r in newer] == sorted(seen[:2])  # type: ignore[index]


def test_bad_filters_are_400(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    headers = {"Authorization": f"Bearer {tokens['auditor']}"}
    for params in ({"verdict": "maybe"}, {"since": "last tuesday"}, {"limit": 0}):
        response = client.get("/v1/audit", params=params, headers=headers)
        assert response.status_code in (400, 422), params
        assert response.text


def test_cursor_beyond_bigint_is_422_not_500(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    headers = {"Authorization": f"Bearer {tokens['auditor']}"}
    for name in ("cursor", "after"):
        for value in (2**63, 2**64 + 5, 10**30, -1):
            response = client.get("/v1/audit", params={name: value}, headers=headers)
            assert response.status_code == 422, (name, value, response.text)
        top = client.get("/v1/audit", params={name: 2**63 - 1}, headers=headers)
        assert top.status_code == 200, top.text


def test_verify_endpoint(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    response = client.get("/v1/audit/verify",
                          headers={"Authorization": f"Bearer {tokens['auditor']}"})
    assert response.json()["ok"] is True and response.json()["events"] == 7
