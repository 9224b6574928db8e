"""The one error tree: every public exception egressguard raises descends from
`EgressguardError`, so a caller (the CLI's top-level handler, a library user) can catch the
project's refusals with one clause and still tell "fix your input" from "try again later".

    EgressguardError                 anything egressguard refuses or cannot do; `hint` (optional)
    ├── InputError                   bad input: fix it and retry; retrying as-is never helps
    │   ├── ConfigError              config.py: an unusable config file
    │   ├── PolicyError              policy/load.py: a policy document rejected (every problem)
    │   ├── CompileError             engine/snapshot.py: a policy naming an unknown tag/alias
    │   ├── InvalidHost              engine/normalize.py: a host that cannot be normalised
    │   ├── CatalogError             catalog/model.py: unknown catalog name, cloud, region...
    │   ├── ServiceTagError          catalog/servicetags.py: a rejected service-tag file or tag
    │   ├── QueryError               audit/query.py: an audit filter that cannot apply
    │   ├── RequestListError         analysis/simulate.py: an unreadable request list
    │   ├── SourceError              analysis/sources.py: a policy source that cannot be read
    │   ├── StoreURLError            store/urls.py: a store URL egressguard cannot use
    │   ├── TLSConfigError           control/apitls.py: an API certificate/key that cannot serve
    │   ├── ApiNotFound, ApiRejected (ApiPolicyRefused)   control/client.py: 404, 4xx
    │   ├── NotFound, Exists, Invalid   store/store.py (also StoreError)
    │   ├── InvalidInput             control/errors.py (also ControlError): HTTP 422
    │   ├── CommandSyntaxError       control/commands.py: command text that does not parse
    │   ├── BodyTooLarge             control/gate.py: an API body past the limit or stalled
    │   ├── LoginFailed              web/session.py: a missing, unknown or expired token
    │   ├── BadRequest               gateway/http1.py: a request the proxy answers with 400
    │   └── BadName, Malformed       dns/wire.py: an unusable DNS name or packet
    ├── Unavailable                  a dependency is down or absent: retrying later may work
    │   ├── StoreUnavailable         store/store.py (also StoreError): HTTP 503
    │   ├── AuditUnavailable         audit/log.py (also TimeoutError): not durable in time
    │   ├── KeyError_                audit/crypto.py: the audit key is missing or malformed
    │   ├── FirewallError            firewall/nft.py: nft missing, not root, kernel refused
    │   ├── ResolveError             gateway/resolver.py (also OSError): no usable address
    │   ├── UpstreamError            gateway/upstream.py and dns/upstream.py (two classes)
    │   └── ApiUnreachable, ApiServerError   control/client.py: no answer, 5xx
    ├── Denied                       a valid request that policy, a role or state refuses
    │   ├── CalloutDenied            callout.py (also PermissionError)
    │   ├── Refused, Forbidden       control/errors.py (also ControlError): HTTP 409 / 403
    │   └── ApiUnauthorized, ApiForbidden   control/client.py: the API answered 401 / 403
    ├── ControlError                 control/errors.py: base of the API's refusals (has status)
    ├── StoreError                   store/store.py: base of the store's refusals
    ├── ApiError                     control/client.py: base of the API client's errors
    └── StartupError                 cli/serve.py: a start-up failure phrased for the operator

Classes keep the standard base they had (`ValueError`, `OSError`, ...) as a second base, so
existing `except ValueError` clauses still work. Private control-flow signals (`_Short`,
`_Collision`, `_Refused`, `_Unsolicited`) are deliberately outside the tree: they never
leave their module, and an `except EgressguardError` must not swallow them.
`tests/test_errors.py` walks the package and fails on a public exception outside the tree.
"""

from __future__ import annotations


class EgressguardError(Exception):
    """Base of every public egressguard exception; `hint` says what to do next, if known."""

    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class InputError(EgressguardError):
    """Bad input from a user or peer (a policy, an option, a name): fix it and retry."""


class Unavailable(EgressguardError):
    """A dependency is down or absent (store, key, upstream, nft): retrying later may work."""


class Denied(EgressguardError):
    """A valid request that the policy, a role or the current state refuses."""


__all__ = ["Denied", "EgressguardError", "InputError", "Unavailable"]
