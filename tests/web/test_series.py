"""The charts' data (`/dashboard/series`) and the grouped denials: the numbers match the
log, on SQLite and PostgreSQL (bucketing is SQL that differs between them)."""

from __future__ import annotations

from collections import Counter

import pytest

from egressguard.audit.query import outcome_of
from egressguard.web import data
from tests.web.conftest import Env, Sections

pytestmark = pytest.mark.timeout(60)


def series(env: Env, role: str, **params: str) -> dict:  # type: ignore[type-arg]
    response = env.client.get("/dashboard/series", params=params, headers=env.headers(role))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_decisions_over_time_add_up_to_the_log(store_env: Env) -> None:
    got = series(store_env, "operator")["decisions"]
    expected = Counter(outcome_of(e.verdict, e.permitted) for e in store_env.events
                       if e.cluster == "default" and e.phase == "decision"
                       and e.time >= store_env.now - 3600)
    assert {o: sum(got[o]) for o in ("allow", "deny", "would-deny")} == {
        "allow": expected["allow"], "deny": expected["deny"],
        "would-deny": expected["would-deny"]}
    assert got["width"] == 60 and len(got["times"]) in (61, 62)
    assert all(b - a == 60 for a, b in zip(got["times"], got["times"][1:], strict=False))


def test_each_decision_lands_in_the_bucket_of_its_time(store_env: Env) -> None:
    got = series(store_env, "auditor", window="15m")["decisions"]
    width = got["width"]
    for e in store_env.events:
        if e.cluster == "default" and e.phase == "decision" and e.verdict == "deny" \
                and e.permitted and e.time >= store_env.now - 900:
            i = got["times"].index(int(e.time // width) * width)
            assert got["would-deny"][i] == 1
    assert sum(got["would-deny"]) == 1


def test_bytes_per_destination_are_for_auditors_and_sum_bytes_sent(store_env: Env) -> None:
    assert "bytes" not in series(store_env, "operator")
    got = series(store_env, "auditor")["bytes"]
    assert {h: sum(v) for h, v in got["hosts"].items()} == {
        "big.blob.core.windows.net": 10_000_000, "api.example.com": 2_048}
    assert next(iter(got["hosts"])) == "big.blob.core.windows.net"  # most first


def test_chart_data_needs_a_role_that_sees_decisions(env: Env) -> None:
    assert env.client.get("/dashboard/series", headers=env.headers("viewer")
                          ).status_code == 403
    assert env.client.get("/dashboard/series").status_code == 401
    assert env.client.get("/dashboard/series", params={"window": "90d"},
                          headers=env.headers("admin")).status_code == 400


def test_denials_are_grouped_by_destination_with_counts(store_env: Env) -> None:
    extra = next(e for e in store_env.events if e.host == "x0.evil.net")
    for _ in range(3):
        store_env.log.emit(extra)
    store_env.log.flush()
    rows = data.top_denied(store_env.log.engine, "default", store_env.now - 3600)
    assert rows[0].host == "x0.evil.net" and rows[0].count == 4
    assert {(r.host, r.outcome) for r in rows} >= {("y.evil.net", "would-deny"),
                                                  ("x1.evil.net", "deny")}
    assert "old.evil.net" not in {r.host for r in rows}  # outside the window


def test_operators_see_grouped_denials_with_a_propose_link(env: Env) -> None:
    page = Sections(env.client.get("/dashboard", headers=env.headers("operator")).text)
    rows = page.rows["denied"]
    assert rows[0] == ["Destination", "Port", "Kind", "Outcome", "Denials", "Last", "Action"]
    assert ["x0.evil.net", "443", "connect", "deny"] in [r[:4] for r in rows[1:]]
    assert all(r[-1] == "Propose allow" for r in rows[1:])
    assert "/dashboard/propose?cluster=default&amp;host=x0.evil.net&amp;port=443" \
           "&amp;kind=connect" in page.source
    auditor = Sections(env.client.get("/dashboard", headers=env.headers("auditor")).text)
    assert "Propose allow" not in auditor.source  # auditors read, they do not change policy


def test_the_live_table_shows_versions_to_auditors_only(env: Env) -> None:
    auditor = Sections(env.client.get("/dashboard", headers=env.headers("auditor")).text)
    operator = Sections(env.client.get("/dashboard", headers=env.headers("operator")).text)
    assert "Policy version" in auditor.rows["live"][0]
    assert "Policy version" not in operator.rows["live"][0]
    assert "Reason" not in operator.rows["live"][0]
    assert "Identity" in auditor.rows["live"][0]
    assert "Identity" not in operator.rows["live"][0]  # sealed, like the reason
    assert len(auditor.rows["live"]) == 1 + 17 and auditor.rows["live"][1][6:8] == [
        "(anonymous)", "2"]
