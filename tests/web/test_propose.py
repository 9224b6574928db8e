"""Propose allow: from a denial, draft the smallest change that permits it, show it as a
YAML diff, and let an operator apply it as the next version (never an auditor or viewer,
never from another site, never over a version it was not drafted against)."""

from __future__ import annotations

import re

import pytest

from egressguard.analysis import allow as propose
from egressguard.catalog import references
from egressguard.engine import compile_policy
from egressguard.engine.request import build_request
from egressguard.policy import load_policy_text
from tests.web.conftest import POLICY, Env, Sections

pytestmark = pytest.mark.timeout(60)


def draft(text: str, host: str, port: int | None = None, kind: str = "connect"
          ) -> propose.Draft:
    policy = load_policy_text(text, "t")
    return propose.propose(policy, 2, propose.dump_policy(policy),
                           propose.target(host, port, kind), references())


def test_the_draft_allows_exactly_that_host_and_port() -> None:
    d = draft(POLICY, "x0.evil.net")
    assert d.permits and d.applicable
    assert "+- name: dashboard-allow\n+  priority: 300\n" in d.diff  # after the others
    assert "+    - x0.evil.net\n+    protocols:\n+    - https:443\n" in d.diff
    snap = compile_policy(d.policy, references())
    assert snap.decide(build_request("x0.evil.net:443", kind="connect")).allowed
    assert not snap.decide(build_request("x0.evil.net:8443", kind="connect")).allowed
    assert not snap.decide(build_request("x1.evil.net:443", kind="connect")).allowed


def test_plain_http_is_proposed_as_http_on_its_port() -> None:
    d = draft(POLICY, "upstream.test", 8080, "http")
    assert "http:8080" in d.diff and d.permits


def test_a_second_proposal_joins_the_same_collection() -> None:
    first = draft(POLICY, "a.example.org")
    text = propose.dump_policy(first.policy)
    second = propose.propose(first.policy, 3, text, propose.target("b.example.org", 443,
                                                                   "connect"), references())
    names = [c.name for c in second.policy.application_rule_collections]
    assert names.count(propose.COLLECTION) == 1
    assert second.diff.count("+  - name:") == 1  # one new rule
    assert "+- name:" not in second.diff  # no new collection


DENYING = POLICY.replace("application_rule_collections:\n", """application_rule_collections:
  - name: blocked
    priority: 100
    action: deny
    rules:
      - {name: evil, targets: ["*.evil.net"], protocols: ["https:443"]}
""")


def test_a_deny_rule_someone_wrote_still_wins() -> None:
    d = draft(DENYING, "x0.evil.net")
    assert not d.permits and not d.applicable
    assert d.verdict.startswith("deny by application:blocked/evil")


@pytest.mark.parametrize(("host", "kind"), [("10.0.0.5", "connect"), ("[::1]", "connect"),
                                            ("bad host!", "connect"), ("a.b", "dns")])
def test_addresses_bad_names_and_other_kinds_are_not_proposed(host: str, kind: str) -> None:
    with pytest.raises(propose.CannotPropose):
        propose.target(host, 443, kind)


def form_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">', page))


def test_an_operator_applies_a_proposal_as_the_next_version(store_env: Env) -> None:
    h = store_env.headers("operator")
    page = store_env.client.get("/dashboard/propose", headers=h, params={
        "host": "x0.evil.net", "port": "443", "kind": "connect"})
    assert page.status_code == 200
    assert "Apply as version 3" in page.text and "x0.evil.net" in Sections(page.text).text["diff"]
    form = form_of(page.text)
    assert form["base"] == "2" and form["host"] == "x0.evil.net"
    done = store_env.client.post("/dashboard/propose", data=form, headers=h,
                                 follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(
        "/dashboard/versions/3")
    version = store_env.store.current("default")
    assert version.number == 3 and version.principal == "operator"
    assert "x0.evil.net" in version.text and "proposed from a denial" in version.summary
    stale = store_env.client.post("/dashboard/propose", data=form, headers=h)
    assert stale.status_code == 409 and "policy changed" in stale.text  # base 2 is gone
    assert store_env.store.current("default").number == 3


@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_only_operators_and_admins_may_propose(env: Env, role: str) -> None:
    h = env.headers(role)
    assert env.client.get("/dashboard/propose", headers=h, params={
        "host": "x0.evil.net"}).status_code == 403
    posted = env.client.post("/dashboard/propose", headers=h, data={
        "host": "x0.evil.net", "port": "443", "kind": "connect", "base": "2"})
    assert posted.status_code == 403
    assert env.store.current("default").number == 2


def test_a_session_post_without_the_form_token_changes_nothing(env: Env) -> None:
    """Attack: another site makes a logged-in operator's browser post the form."""
    login = env.client.get("/dashboard/login")
    csrf = form_of(login.text)["csrf"]
    env.client.post("/dashboard/login", data={"csrf": csrf, "token": env.tokens["operator"],
                                              "next": "/dashboard"})
    page = env.client.get("/dashboard/propose", params={"host": "x0.evil.net"})
    form = form_of(page.text)
    assert form["csrf"]
    forged = {**form, "csrf": "0" * 64}
    assert env.client.post("/dashboard/propose", data=forged).status_code == 403
    assert env.client.post("/dashboard/propose", data={
        k: v for k, v in form.items() if k != "csrf"}).status_code == 403
    assert env.store.current("default").number == 2
    applied = env.client.post("/dashboard/propose", data=form, follow_redirects=False)
    assert applied.status_code == 303 and env.store.current("default").number == 3


def test_a_proposal_for_an_address_explains_why_not(env: Env) -> None:
    page = env.client.get("/dashboard/propose", headers=env.headers("operator"),
                          params={"host": "10.1.2.3"})
    assert page.status_code == 400 and "network rule" in page.text
