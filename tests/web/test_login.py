"""Browser sessions: the token goes in a form post, the answer is a server-side session id in
an HttpOnly, SameSite=Strict cookie; the token is never in a cookie or a URL. Attacks: login
CSRF, open redirect, a revoked token's session, a stolen cookie replayed after logout, an
expired session or token."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from egressguard.control.api import create_app
from egressguard.store.tokens import Refusal
from egressguard.web.session import CSRF_COOKIE, SESSION_COOKIE
from tests.web.conftest import Env

pytestmark = pytest.mark.timeout(60)


def csrf_of(client: TestClient, next_path: str = "/dashboard") -> str:
    form = client.get("/dashboard/login", params={"next": next_path})
    assert form.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found is not None
    return found.group(1)


def post_login(client: TestClient, token: str, csrf: str | None = None,
               next_path: str = "/dashboard") -> httpx.Response:
    csrf = csrf_of(client, next_path) if csrf is None else csrf
    return client.post("/dashboard/login", data={"token": token, "csrf": csrf,
                                                 "next": next_path}, follow_redirects=False)


def session_cookie(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


def test_without_a_session_the_browser_is_sent_to_login(env: Env) -> None:
    response = env.client.get("/dashboard", params={"cluster": "default"},
                              follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == (
        "/dashboard/login?next=%2Fdashboard%3Fcluster%3Ddefault")
    assert env.client.get("/dashboard/versions/1",
                          follow_redirects=False).status_code == 303


def test_a_program_with_a_bad_token_gets_401(env: Env) -> None:
    response = env.client.get("/dashboard", headers={"Authorization": "Bearer egt_nope"},
                              follow_redirects=False)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(env: Env) -> None:
    client = env.client
    response = post_login(client, env.tokens["viewer"])
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = session_cookie(response)[SESSION_COOKIE]
    assert cookie.value.startswith("egs_") and len(cookie.value) > 40
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/dashboard" and not cookie["secure"]
    assert env.tokens["viewer"] not in response.headers["location"]
    page = client.get("/dashboard")
    assert page.status_code == 200 and 'id="policy"' in page.text
    assert "Not permitted" in page.text  # viewer: no audit panels
    out = client.post("/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303
    assert session_cookie(out)[SESSION_COOKIE]["max-age"] == "0"
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_over_https_the_cookies_are_secure(env: Env) -> None:
    with TestClient(create_app(env.store), base_url="https://testserver") as client:
        response = post_login(client, env.tokens["auditor"])
        assert response.status_code == 303
        assert session_cookie(response)[SESSION_COOKIE]["secure"]
        assert client.get("/dashboard").status_code == 200


def test_login_without_the_forms_csrf_value_is_refused(env: Env) -> None:
    """Attack: another site posts its own token to log the victim in as the attacker."""
    client = env.client
    csrf_of(client)  # the victim has a CSRF cookie...
    response = post_login(client, env.tokens["admin"], csrf="forged-" + "x" * 36)
    assert response.status_code == 403
    assert SESSION_COOKIE not in session_cookie(response)
    fresh = TestClient(create_app(env.store))  # ...or none at all
    assert post_login(fresh, env.tokens["admin"], csrf="").status_code == 403


def test_wrong_or_empty_token_is_refused_without_a_cookie(env: Env) -> None:
    for token in ("egt_wrong", "", "x" * 10_000):
        response = post_login(env.client, token)
        assert response.status_code in (400, 401)
        assert SESSION_COOKIE not in session_cookie(response)


def test_revoking_the_token_ends_the_session(env: Env) -> None:
    client = env.client
    assert post_login(client, env.tokens["operator"]).status_code == 303
    assert client.get("/dashboard").status_code == 200
    env.store.revoke_token("operator")
    response = client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert session_cookie(response)[SESSION_COOKIE]["max-age"] == "0"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/dashboard",
                                    "/dashboard//evil.example", "/\\evil.example",
                                    "javascript:alert(1)", "/v1/tokens"])
def test_login_never_redirects_off_the_dashboard(env: Env, target: str) -> None:
    """Attack: a login link whose `next` sends the user to another site afterwards."""
    response = post_login(env.client, env.tokens["viewer"], next_path=target)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"


def test_login_returns_to_the_page_asked_for(env: Env) -> None:
    target = "/dashboard/versions/1?cluster=default"
    response = post_login(env.client, env.tokens["viewer"], next_path=target)
    assert response.headers["location"] == target


def test_the_csrf_cookie_is_strict_and_httponly(env: Env) -> None:
    fresh = TestClient(create_app(env.store))
    response = fresh.get("/dashboard/login")
    cookie = session_cookie(response)[CSRF_COOKIE]
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict"


def test_login_rejects_what_is_not_a_form(env: Env) -> None:
    response = env.client.post("/dashboard/login", json={"token": env.tokens["admin"]})
    assert response.status_code == 400


def test_the_session_cookie_never_carries_the_api_token(env: Env) -> None:
    """Attack: a cookie leaked from a browser (disk, backup, XSS elsewhere) must not hand
    over the API token, which works for the whole API and for months."""
    response = post_login(env.client, env.tokens["admin"])
    assert response.status_code == 303
    for header in response.headers.get_list("set-cookie"):
        assert env.tokens["admin"] not in header
    value = session_cookie(response)[SESSION_COOKIE].value
    api = env.client.get("/v1/clusters", headers={"Authorization": f"Bearer {value}"})
    assert api.status_code == 401  # the session id is no API token


def test_a_cookie_replayed_after_logout_is_refused(env: Env) -> None:
    """Attack: someone copied the session cookie; the user logs out; the copy must die."""
    client = env.client
    stolen = session_cookie(post_login(client, env.tokens["operator"]))[SESSION_COOKIE].value
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 303
    thief = TestClient(create_app(env.store), cookies={SESSION_COOKIE: stolen})
    assert thief.get("/dashboard", follow_redirects=False).status_code == 303


def test_an_expired_session_is_refused(env: Env) -> None:
    opened = env.store.open_session(env.tokens["viewer"], lifetime=1.0)
    assert not isinstance(opened, Refusal)
    client = TestClient(create_app(env.store), cookies={SESSION_COOKIE: opened[0]})
    assert client.get("/dashboard").status_code == 200
    time.sleep(1.2)
    response = client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert session_cookie(response)[SESSION_COOKIE]["max-age"] == "0"


def test_an_expired_token_cannot_log_in_and_says_why(env: Env) -> None:
    token, _ = env.store.create_token("old", "viewer", "test", lifetime=60)
    with env.store.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET expires_at = :t WHERE name = 'old'"),
                     {"t": datetime.now(UTC) - timedelta(seconds=1)})
    response = post_login(env.client, token)
    assert response.status_code == 401 and SESSION_COOKIE not in session_cookie(response)
    assert "expired" in response.text and "token rotate old" in response.text
