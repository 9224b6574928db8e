"""The API's front door, a pure ASGI middleware: it decides from the request head alone,
before the application reads one body byte.

In order: the client's source address against `allow_cidrs` (403); the declared size
(`Content-Length` above `max_body`: 413, the body never read); the credential (401 unless
the path is public; the store lookup runs in a worker thread, and a store that cannot be
reached answers 503 with `Retry-After`); then the body is counted while the application
streams it, so a chunked body gets 413 as soon as it passes the limit (and 408 once no
body byte came for `BODY_IDLE_TIMEOUT`: a slow body cannot hold a connection forever). A
caller that is not authenticated may send at most `UNAUTHENTICATED_MAX_BODY` (the login
form is small).
Rejecting a request whose body is still on the wire closes the connection, so the server
never reads (or buffers) the rest.

Public, no credential needed: health, readiness, metrics, the OpenAPI document and its
viewers, the dashboard's login form and stylesheet. Other dashboard pages are passed on
without a credential only when they carry no body: they answer with a redirect to the
login form (a browser) or an HTML 401 (a program).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio.to_thread
from starlette.requests import cookie_parser

from egressguard.control.auth import (
    DASHBOARD_PREFIX,
    SCOPE_KEY,
    Principal,
    Refusal,
    Verifier,
    credentials,
    identify,
)
from egressguard.control.health import RETRY_AFTER, StoreHealth
from egressguard.errors import InputError
from egressguard.store import unavailable_reason

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1024 * 1024
UNAUTHENTICATED_MAX_BODY = 16 * 1024
BODY_IDLE_TIMEOUT = 10.0  # seconds without a body byte before 408 (slow-body attacks)
PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                    "/docs/oauth2-redirect", "/redoc", "/dashboard/login",
                    "/dashboard/static/dashboard.css"})

_log = logging.getLogger(__name__)


class BodyTooLarge(InputError):
    """Raised into the application when the streamed body passes the limit or stalls."""


def parse_cidrs(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _source_allowed(client: Any, networks: list[Any]) -> tuple[bool, str]:
    host = client[0] if client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False, host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in n for n in networks), host


def declared_length(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked?, valid?) from the raw header list."""
    lengths = {v.strip() for k, v in headers if k == b"content-length"}
    chunked = any(k == b"transfer-encoding" for k, _ in headers)
    if not lengths:
        return None, chunked, True
    if len(lengths) > 1 or not all(v.isdigit() and len(v) <= 18 for v in lengths):
        return None, chunked, False
    return int(lengths.pop()), chunked, True


async def reply(send: Send, status: int, code: str, message: str, *, close: bool,
                extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiGate:
    """Source filter, body limit and authentication in front of the API app."""

    def __init__(self, app: ASGIApp, *, store: Verifier, health: StoreHealth,
                 max_body: int = DEFAULT_MAX_BODY,
                 allow_cidrs: Sequence[str] | None = None,
                 body_idle_timeout: float = BODY_IDLE_TIMEOUT) -> None:
        self.app = app
        self.body_idle_timeout = body_idle_timeout
        self.store = store
        self.health = health
        self.max_body = max_body
        self.networks = parse_cidrs(allow_cidrs) if allow_cidrs else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.networks is not None:
            allowed, host = _source_allowed(scope.get("client"), self.networks)
            if not allowed:
                await reply(send, 403, "SourceNotAllowed",
                            f"source address {host or '?'} is not in the allowed CIDRs",
                            close=True)
                return
        length, chunked, valid = declared_length(scope["headers"])
        has_body = chunked or bool(length)
        if not valid:
            await reply(send, 400, "BadRequest", "invalid Content-Length", close=True)
            return
        if length is not None and length > self.max_body:
            await self._too_large(send, self.max_body)
            return
        found = await self._authenticate(scope, send, has_body)
        if found is False:
            return
        authed = isinstance(found, Principal)
        path: str = scope["path"]
        if not authed and path not in PUBLIC and not (
                _dashboard(path) and not has_body):
            reason = found.reason if isinstance(found, Refusal) else "missing bearer token"
            await reply(send, 401, "Unauthenticated", reason, close=has_body,
                        extra=[(b"www-authenticate", b"Bearer")])
            return
        limit = self.max_body if authed else min(self.max_body, UNAUTHENTICATED_MAX_BODY)
        if length is not None and length > limit:
            await self._too_large(send, limit)
            return
        if not has_body:
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send, limit)

    async def _authenticate(self, scope: Scope, send: Send, has_body: bool
                            ) -> Principal | Refusal | bool | None:
        """The credential's verdict (also left in the scope), or False once a 503 for an
        unreachable store has been sent."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        cookies = cookie_parser(headers.get("cookie", "")) if "cookie" in headers else {}
        cred = credentials(scope["path"], headers, cookies)
        found: Principal | Refusal | None = None
        if cred is not None:
            try:
                found = await anyio.to_thread.run_sync(identify, self.store, *cred)
            except Exception as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                self.health.failed(reason)
                await reply(send, 503, "StoreUnavailable",
                            f"the policy store is unavailable: {reason}", close=has_body,
                            extra=[(b"retry-after", str(RETRY_AFTER).encode())])
                return False
        scope[SCOPE_KEY] = found
        return found

    async def _too_large(self, send: Send, limit: int) -> None:
        await reply(send, 413, "PayloadTooLarge",
                    f"request body larger than {limit} bytes", close=True)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen = 0
        refused: tuple[int, str, str] | None = None  # the answer that replaces the app's
        started = complete = False

        async def limited_receive() -> Message:
            nonlocal seen, refused, complete
            if complete:
                return await receive()  # e.g. waiting for a disconnect: no deadline
            try:
                with anyio.fail_after(self.body_idle_timeout):
                    message = await receive()
            except TimeoutError:
                refused = (408, "RequestTimeout", f"no body bytes for "
                                                  f"{self.body_idle_timeout:g} s")
                raise BodyTooLarge from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > limit:
                    refused = (413, "PayloadTooLarge",
                               f"request body larger than {limit} bytes")
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the refusal below replaces whatever the application answers
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await reply(send, *refused, close=True)


def _dashboard(path: str) -> bool:
    return path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")
