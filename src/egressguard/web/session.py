"""Who is looking at the dashboard: a server-side session, or the API's bearer token.

A browser cannot attach `Authorization: Bearer` to a link, and a token in the URL would
end up in access logs and the Referer, so `/dashboard/login` takes the token in a form
post and answers with a session: a random id in an HttpOnly, SameSite=Strict cookie
(Secure over HTTPS) scoped to `/dashboard`, whose SHA-256 the store keeps with an expiry
(8 hours, never past the token's own). The cookie never holds the token. The API's gate
looks the session up on every request, so logging out (which revokes the row), revoking
the token or its expiry ends the session.

The login form carries a double-submit CSRF value (a random cookie echoed in a hidden
field), so another site cannot log a victim in with the attacker's token. The one other
form, applying a proposed allow, carries `form_token`: a value derived from the session
id, which another site can neither read (HttpOnly, SameSite=Strict) nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from fastapi import Request
from fastapi.responses import Response

from egressguard.control.auth import SESSION_COOKIE, Principal, hash_token, outcome
from egressguard.errors import InputError
from egressguard.store.tokens import MAX_SECRET, SESSION_LIFETIME, Refusal

__all__ = ["COOKIE_PATH", "CSRF_COOKIE", "SESSION_COOKIE", "LoginFailed", "login",
           "logout", "principal"]

CSRF_COOKIE = "egressguard_csrf"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = int(SESSION_LIFETIME)
_NEXT = re.compile(r"/dashboard(?:/[A-Za-z0-9_/-]*)?(?:\?[A-Za-z0-9_=&.%-]*)?")


class LoginFailed(InputError, ValueError):
    """The posted token is missing, unknown, revoked or expired (message safe to show)."""


def principal(request: Request) -> Principal | None:
    """The caller from the Authorization header, else from the session cookie; None if
    neither is valid."""
    found = outcome(request)
    return found if isinstance(found, Principal) else None


def login(request: Request, token: str) -> tuple[str, Principal]:
    """Open a session with `token`: (session id for the cookie, principal), or
    `LoginFailed`. Store I/O: call it off the event loop."""
    token = token.strip()
    if not token:
        raise LoginFailed("enter an API token")
    if len(token) > MAX_SECRET:
        raise LoginFailed("invalid or revoked token")
    opened = request.app.state.store.open_session(token)
    if isinstance(opened, Refusal):
        raise LoginFailed(opened.reason)
    session_id, who = opened
    return session_id, who


def logout(request: Request) -> None:
    """Revoke the browser's session in the store (store I/O)."""
    value = request.cookies.get(SESSION_COOKIE, "")
    if value and len(value) <= MAX_SECRET:
        request.app.state.store.close_session(hash_token(value))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(request: Request, response: Response, session_id: str) -> None:
    response.set_cookie(SESSION_COOKIE, session_id, max_age=SESSION_SECONDS,
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


def form_token(request: Request) -> str:
    """The anti-forgery value for this session's forms ("" without a session cookie)."""
    value = request.cookies.get(SESSION_COOKIE, "")
    if not value or len(value) > MAX_SECRET:
        return ""
    return hmac.new(value.encode(), b"egressguard dashboard form", hashlib.sha256).hexdigest()


def form_ok(request: Request, posted: str) -> bool:
    expected = form_token(request)
    return bool(expected) and hmac.compare_digest(expected.encode(), posted.encode())
