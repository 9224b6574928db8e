"""Replay on the dashboard: a stored version or a pasted candidate re-decides the
recorded decisions and lists what would flip, before anything is applied; auditors and
admins only, forms only from the dashboard's own session, hostile records escaped."""

from __future__ import annotations

import re

import pytest

from egressguard.web.common import MAX_FORM
from tests.web.conftest import HOSTILE, POLICY, Env, Sections, event

pytestmark = pytest.mark.timeout(60)
WIDER = POLICY.replace('"api.example.com"]', '"api.example.com", "*.evil.net"]')


def flips(page: str, ident: str) -> list[list[str]]:
    return Sections(page).rows.get(ident, [])[1:]   # without the header row


def test_replaying_the_previous_version_lists_what_it_would_flip(env: Env) -> None:
    got = env.client.get("/dashboard/replay", params={"version": 1, "since": "1h"},
                         headers=env.headers("auditor"))
    assert got.status_code == 200, got.text
    sections = Sections(got.text)
    assert "Replay of version 1 over the last 1h" in sections.text["replay-summary-panel"]
    # Version 1 is restricted with nothing allowed: everything let through would be cut,
    # the report-only would-deny too; what was refused stays refused.
    denied = {row[3]: (int(row[0]), row[1]) for row in flips(got.text, "newly-denied")}
    assert denied["api.example.com:443"] == (3, "unknown client")
    assert {f"h{i}.github.com:443" for i in range(7)} | {"y.evil.net:443"} <= set(denied)
    assert len(denied) == 9
    assert flips(got.text, "newly-allowed") == []
    assert "11 newly denied, 0 newly allowed" in sections.text["replay-summary-panel"]
    assert "old.evil.net" not in got.text           # outside the window
    assert "other.example.com" not in got.text      # another cluster


def test_recorded_values_are_escaped(env: Env) -> None:
    env.log.emit(event(host="x9.evil.net", verdict="deny", permitted=False, layer="default",
                       rule="default:deny", client_identity=HOSTILE))
    env.log.flush()
    wider = env.client.post("/dashboard/replay", data={"policy_text": WIDER, "since": "1h"},
                            headers=env.headers("auditor"))
    assert [HOSTILE, "connect", "x9.evil.net:443"] in [
        row[1:] for row in flips(wider.text, "newly-allowed")]
    assert HOSTILE not in wider.text and "&lt;script&gt;" in wider.text


def test_a_pasted_candidate_is_replayed_without_being_applied(env: Env) -> None:
    before = env.store.current("default").number
    narrow = POLICY.replace(', "api.example.com"]', "]")
    got = env.client.post("/dashboard/replay", data={
        "policy_text": narrow, "since": "1h", "cluster": "default"},
        headers=env.headers("admin"))
    assert got.status_code == 200, got.text
    denied = {row[3]: int(row[0]) for row in flips(got.text, "newly-denied")}
    # y.evil.net was let through report-only; the candidate enforces: it flips too.
    assert denied == {"api.example.com:443": 3, "y.evil.net:443": 1}
    summary = Sections(got.text).text["replay-summary-panel"]
    assert re.search(r"\d+ recorded decisions replayed: 4 newly denied, 0 newly allowed",
                     summary), summary
    assert env.store.current("default").number == before  # nothing applied
    wider = env.client.post("/dashboard/replay", data={"policy_text": WIDER, "since": "1h"},
                            headers=env.headers("auditor"))
    assert {row[3] for row in flips(wider.text, "newly-allowed")} >= {
        f"x{i}.evil.net:443" for i in range(4)}


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_replay_needs_an_auditor_or_admin(env: Env, role: str) -> None:
    got = env.client.get("/dashboard/replay", params={"version": 1},
                         headers=env.headers(role))
    assert got.status_code == 403 and "auditor or admin" in got.text
    posted = env.client.post("/dashboard/replay", data={"policy_text": POLICY},
                             headers=env.headers(role))
    assert posted.status_code == 403


def test_bad_input_is_answered_with_the_reason(env: Env) -> None:
    auditor = env.headers("auditor")
    bad_since = env.client.get("/dashboard/replay", params={"version": 2, "since": "soon"},
                               headers=auditor)
    assert bad_since.status_code == 400 and "soon" in Sections(bad_since.text).text[
        "replay-problem"]
    missing = env.client.get("/dashboard/replay", params={"version": 99}, headers=auditor)
    assert missing.status_code == 404
    bad_policy = env.client.post("/dashboard/replay", data={
        "policy_text": "restrict_outbound_network_access: maybe\n"}, headers=auditor)
    assert bad_policy.status_code == 400
    assert "line 1" in Sections(bad_policy.text).text["replay-problem"]
    assert "restrict_outbound_network_access: maybe" in bad_policy.text  # kept in the form
    bad_cluster = env.client.get("/dashboard/replay", params={"cluster": "NO!"},
                                 headers=auditor)
    assert bad_cluster.status_code == 400
    # A candidate larger than the login form's bound is still read (policies are big).
    big = POLICY + "".join(f"# {'x' * 70}\n" for _ in range(2 * MAX_FORM // 70))
    assert env.client.post("/dashboard/replay", data={"policy_text": big, "since": "1h"},
                           headers=auditor).status_code == 200


def test_a_form_post_from_a_session_needs_the_pages_form_value(env: Env) -> None:
    login = env.client.get("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf
    done = env.client.post("/dashboard/login", data={"csrf": csrf.group(1),
                                                    "token": env.tokens["auditor"],
                                                    "next": "/dashboard/replay"},
                           follow_redirects=False)
    assert done.status_code == 303
    page = env.client.get("/dashboard/replay")
    assert page.status_code == 200
    token = re.search(r'id="replay-text".*?name="csrf" value="([^"]+)"', page.text, re.S)
    assert token
    forged = env.client.post("/dashboard/replay", data={"policy_text": POLICY, "csrf": "x"})
    assert forged.status_code == 403
    real = env.client.post("/dashboard/replay", data={"policy_text": POLICY, "since": "1h",
                                                     "csrf": token.group(1)})
    assert real.status_code == 200 and "1 newly denied, 0 newly allowed" in real.text


def test_the_version_page_and_the_overview_link_to_replay(env: Env) -> None:
    version = env.client.get("/dashboard/versions/2", headers=env.headers("admin"))
    assert "/dashboard/replay?cluster=default&amp;version=2" in version.text
    overview = env.client.get("/dashboard", headers=env.headers("auditor"))
    assert "/dashboard/replay?cluster=default" in Sections(overview.text).source
    operator = env.client.get("/dashboard", headers=env.headers("operator"))
    assert 'id="replay"' not in operator.text
