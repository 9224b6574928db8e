"""Who is looking at the dashboard: the API's bearer token, from a cookie or the header.

A browser cannot attach `Authorization: Bearer` to a link, and a token in the URL would
end up in access logs and the Referer, so `/dashboard/login` takes the token in a form
post and keeps it in an HttpOnly, SameSite=Strict cookie (Secure over HTTPS) scoped to
`/dashboard`. The token is looked up on every request, so revoking it ends the session.

Login is the only state-changing form: it carries a double-submit CSRF value (a random
cookie echoed in a hidden field), so another site cannot log a victim in with the
attacker's token. The dashboard itself only reads.
"""

from __future__ import annotations

import hmac
import re
import secrets

from fastapi import Request
from fastapi.responses import Response

from egressguard.control.auth import Principal, bearer, hash_token

SESSION_COOKIE = "egressguard_session"
CSRF_COOKIE = "egressguard_csrf"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 8 * 3600
_MAX_TOKEN = 512
_NEXT = re.compile(r"/dashboard(?:/[A-Za-z0-9_/-]*)?(?:\?[A-Za-z0-9_=&.%-]*)?")


class LoginFailed(ValueError):
    """The posted token is missing, unknown or revoked (message safe to show)."""


def principal(request: Request) -> Principal | None:
    """The caller from the Authorization header, else from the session cookie; None if
    neither holds a valid token."""
    token = bearer(request) or request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > _MAX_TOKEN:
        return None
    found: Principal | None = request.app.state.store.principal_for(hash_token(token))
    return found


def login(request: Request, token: str) -> Principal:
    """The principal `token` names, or `LoginFailed`."""
    token = token.strip()
    if not token:
        raise LoginFailed("enter an API token")
    if len(token) > _MAX_TOKEN:
        raise LoginFailed("invalid or revoked token")
    found = request.app.state.store.principal_for(hash_token(token))
    if found is None:
        raise LoginFailed("invalid or revoked token")
    assert isinstance(found, Principal)
    return found


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token.strip(), max_age=SESSION_SECONDS,
                        path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=_secure(request))
    response.delete_cookie(CSRF_COOKIE, path=COOKIE_PATH, httponly=True,
                           samesite="strict", secure=_secure(request))


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True,
                           samesite="strict", secure=_secure(request))


def csrf_value(request: Request) -> tuple[str, bool]:
    """The login form's CSRF value: the browser's cookie if it holds one, else a new
    value (second item True: set it with `set_csrf`)."""
    value = request.cookies.get(CSRF_COOKIE, "")
    if re.fullmatch(r"[A-Za-z0-9_-]{43}", value):
        return value, False
    return secrets.token_urlsafe(32), True


def set_csrf(request: Request, response: Response, value: str) -> None:
    response.set_cookie(CSRF_COOKIE, value, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=_secure(request))


def csrf_ok(request: Request, posted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), posted.encode())


def safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path only (no open redirect)."""
    if value and _NEXT.fullmatch(value) and "//" not in value:
        return value
    return "/dashboard"
