"""The CLI's client of the REST API: one request function, HTTP errors as the project's
errors (each with a hint), nothing else.

When a server is configured (`egressguard login --server URL`, `--api`, `$EGRESSGUARD_API`)
the commands that read or change the control plane go through it, so the server checks
the token's roles (per cluster too) and records the token's name as the author, instead
of the OS user the direct store access records. `--store` still opens the store directly
(bootstrap: the first admin token, recovery).

Import-light on purpose: `cluster update` must start fast, so httpx is imported on the
first request and this module pulls in nothing of the server side.

    ApiError (EgressguardError)   status: the HTTP status (0: no answer)
    ├── ApiUnreachable            no connection, TLS failure, timeout  (also Unavailable)
    ├── ApiUnauthorized           401: no, unknown, revoked or expired token (also Denied)
    ├── ApiForbidden              403: the token's roles do not allow it (also Denied)
    ├── ApiNotFound               404 (also InputError)
    ├── ApiRejected               400, 409, 413, 422: fix the input (also InputError)
    │   └── ApiPolicyRefused      422 "policy refused": assertions or the ceiling
    └── ApiServerError            5xx: retry later (also Unavailable)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from egressguard import config
from egressguard.errors import Denied, EgressguardError, InputError, Unavailable

ENV_TOKEN = "EGRESSGUARD_TOKEN"
MAX_TOKEN_FILE = 4096
TIMEOUT = 30.0
LOGIN_HINT = "log in with `egressguard login --server URL --token-file FILE`"


class ApiError(EgressguardError):
    """The API refused a request or could not be reached; `status` is the HTTP status."""

    status = 0

    def __init__(self, message: str, status: int = 0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ApiUnreachable(ApiError, Unavailable):
    """No answer from the API (connection refused, TLS verification failed, timeout)."""


class ApiUnauthorized(ApiError, Denied):
    """401: the token is missing, unknown, revoked or expired."""


class ApiForbidden(ApiError, Denied):
    """403: the token's roles do not allow this (on this cluster)."""


class ApiNotFound(ApiError, InputError):
    """404: no such cluster, version or token."""


class ApiRejected(ApiError, InputError):
    """400, 409, 413 or 422: the request was understood and refused as it is."""


class ApiPolicyRefused(ApiRejected):
    """422 `policy refused`: the cluster's assertions or ceiling refused the write."""


class ApiServerError(ApiError, Unavailable):
    """5xx: the server failed or its store is unavailable."""


def validate_server(url: str) -> str:
    """`url` without a trailing slash, if it is an http(s) URL with a host; else InputError."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiRejected(f"invalid server URL {url!r}",
                          hint="expected e.g. https://gateway.internal:8080")
    return url.strip().rstrip("/")


def read_token_file(path: Path) -> str:
    """The token in `path` (first line, stripped); InputError if absent or empty."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ApiRejected(f"token file {path}: cannot read: {exc.strerror or exc}",
                          hint=LOGIN_HINT) from None
    text = data.decode("utf-8", "replace").strip()
    if not text or len(data) > MAX_TOKEN_FILE:
        raise ApiRejected(f"token file {path}: expected one token", hint=LOGIN_HINT)
    return text.splitlines()[0].strip()


@dataclass(frozen=True)
class Client:
    """A server, the bearer token to send (None: anonymous) and the CA file to trust."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    timeout: float = TIMEOUT

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, Any] | None = None, text: bool = False) -> Any:
        """The JSON answer (or text with `text=True`) of one request; an ApiError for
        anything but 2xx."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = httpx.request(method, self.server + path, json=body, params=query,
                                     headers=headers, timeout=self.timeout,
                                     verify=self.ca_file or True)
        except httpx.HTTPError as exc:
            raise _unreachable(self.server, exc) from None
        if response.status_code >= 400:
            raise error_for(response.status_code, _message(response))
        return response.text if text else response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def cluster_path(self, name: str, rest: str = "") -> str:
        return f"/v1/clusters/{quote(name, safe='')}{rest}"


def _unreachable(server: str, exc: Exception) -> ApiUnreachable:
    reason = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
        return ApiUnreachable(f"cannot verify the TLS certificate of {server}",
                              hint="give the server's certificate with `egressguard login "
                                   "--server URL --cacert FILE` (compare its SHA-256 "
                                   "fingerprint with the one the server printed)")
    return ApiUnreachable(f"cannot reach the API at {server}: {reason}",
                          hint="check that the server runs and `egressguard config show` "
                               "names it; --store opens the store directly")


def _message(response: Any) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        detail = data.get("detail")
        if isinstance(detail, dict):
            return str(detail.get("message", detail))
        if detail is not None:
            return str(detail)
    return str(data)[:500]


def error_for(status: int, message: str) -> ApiError:
    """The error (and hint) for an HTTP error status and the server's message."""
    if status == 401:
        hint = ("ask an admin for a new secret (`egressguard token rotate NAME`), then log "
                "in again" if "expired" in message else LOGIN_HINT)
        return ApiUnauthorized(message, status, hint)
    if status == 403:
        return ApiForbidden(message, status, "ask an admin for a role on this cluster "
                                             "(`egressguard token create --grant "
                                             "CLUSTER=ROLE`)")
    if status == 404:
        return ApiNotFound(message, status)
    if status == 422 and message.startswith("policy refused:"):
        return ApiPolicyRefused(message, status)
    if status >= 500:
        return ApiServerError(message, status, "retry later; the server's log says more")
    return ApiRejected(message, status)


def token_from(given: str | None, token_file: str | None) -> str | None:
    """The token to send: `given` (--token or $EGRESSGUARD_TOKEN), else the configured
    token file's."""
    if given:
        return given.strip()
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN].strip()
    return read_token_file(Path(token_file)) if token_file else None


def server_for(store: str | None, api: str | None) -> str | None:
    """The server to talk to, or None for direct store access: an explicit `--api` wins,
    then an explicit `--store`, then the configured server."""
    return api or (None if store else config.current().api.value)


def remote(store: str | None, api: str | None, token: str | None) -> Client | None:
    """The client to use (see `server_for`), or None for direct store access."""
    server = server_for(store, api)
    if not server:
        return None
    settings = config.current()
    return Client(validate_server(server), token_from(token, settings.token_file.value),
                  settings.ca_file.value)
