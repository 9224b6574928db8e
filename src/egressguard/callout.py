"""The library check: in-process callout decisions for applications.

An application that calls out on a user's behalf (a query engine reading an external SQL
table, a service fetching a webhook URL) asks the policy before it connects, as Azure Data
Explorer does with its callout policy::

    from egressguard.callout import CalloutDenied, Guard

    guard = Guard.from_file("policy.yaml")            # reloads when the file changes
    guard.require("sql", "https://myserver.database.windows.net")   # -> Decision
    try:
        guard.require("webapi", "https://attacker.example/collect")
    except CalloutDenied as exc:
        print(exc)   # Callout to 'https://attacker.example/collect' is not allowed by ...

    # or let httpx ask before every request it sends:
    client = httpx.Client(event_hooks={"request": [guard.httpx_hook("webapi")]})

`check` only decides (and records); `require` raises `CalloutDenied` unless the call is
permitted (a report-only denial is permitted and recorded). The address guard applies to
IP-literal URIs and to `addresses=` you pass (the addresses you will connect to); for
names, route the connection through the gateway so that it is resolved and checked once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from egressguard.enforce.checkpoint import Checkpoint
from egressguard.enforce.events import EventSink, NullSink
from egressguard.engine import Decision, Kind, Request, Snapshot
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.engine.normalize import IPAddress
from egressguard.engine.snapshot import CALLOUT_ERROR
from egressguard.errors import Denied
from egressguard.policy import Policy
from egressguard.source import UNRESTRICTED, PolicyFileWatcher, active_of, holder_for

if TYPE_CHECKING:
    import httpx

    from egressguard.source import PolicyFeed
    from egressguard.store import Store

log = logging.getLogger("egressguard.callout")

__all__ = ["CalloutDenied", "Guard"]


class CalloutDenied(PermissionError, Denied):
    """A callout the policy does not allow. `str(exc)` is Data Explorer's wording:
    "Callout to '<uri>' is not allowed by the callout policy (...) (error SEM0056)"; `code`
    is that error's name."""

    code = "SEM0056"

    def __init__(self, decision: Decision, callout_type: str, uri: str) -> None:
        super().__init__(decision.reason)
        self.decision = decision
        self.callout_type = callout_type
        self.uri = uri


Source = Policy | Snapshot | SnapshotHolder | None


def _holder(source: Source) -> SnapshotHolder:
    if isinstance(source, SnapshotHolder):
        return source
    if isinstance(source, Snapshot):
        return SnapshotHolder(Active(source, "snapshot", "in-process"))
    if isinstance(source, Policy):
        return SnapshotHolder(active_of(source, "policy", "in-process"))
    return holder_for(None, UNRESTRICTED)


class Guard:
    """Decides callouts against the policy in force (`source`: a `Policy`, a compiled
    `Snapshot`, a `SnapshotHolder` kept current by someone else, or None for
    `UNRESTRICTED`); `from_file` and `from_store` follow a file or a store cluster.
    Thread-safe; each check reads the current snapshot once.

    >>> guard = Guard()                                  # UNRESTRICTED
    >>> guard.check("sql", "https://myserver.database.windows.net").allowed
    True
    >>> guard.check("webapi", "https://example.org").allowed   # no webapi entry
    False
    """

    def __init__(self, source: Source = None, *, sink: EventSink | None = None,
                 cluster: str = "default", report_only: bool = False) -> None:
        self.holder = _holder(source)
        self.sink = sink or NullSink()
        self.cluster = cluster
        self.report_only = report_only
        self._watcher: PolicyFileWatcher | None = None
        self._feed: PolicyFeed | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, watch: bool = True,
                  interval: float = 1.0, sink: EventSink | None = None,
                  cluster: str = "default", report_only: bool = False) -> Guard:
        """A guard for the policy file at `path` (raises `PolicyError` if it is invalid).
        With `watch`, edits are picked up within `interval` seconds; an invalid edit is
        logged and the previous policy stays in force."""
        guard = cls(holder_for(path), sink=sink, cluster=cluster, report_only=report_only)
        if watch:
            guard._watcher = PolicyFileWatcher(path, guard.holder, interval).start()
        return guard

    @classmethod
    def from_store(cls, store: Store | str, cluster: str = "default", *,
                   sink: EventSink | None = None, report_only: bool = False) -> Guard:
        """A guard for `cluster`'s current policy in `store` (a `Store` or its URL),
        following every change made through the CLI, the API or another process within
        about a second; if the store stops answering the last policy stays in force.
        Raises `SourceError` if the cluster cannot be read now."""
        from egressguard.source import follow

        live = follow(None, cluster, store)
        guard = cls(live.holder, sink=sink, cluster=cluster, report_only=report_only)
        guard._feed = live.feed
        return guard

    def reload(self) -> bool:
        """Look at the file or store now (e.g. on SIGHUP); True if a new policy is in force."""
        if self._feed is not None:
            return self._feed.refresh()
        return self._watcher.reload() if self._watcher is not None else False

    def close(self) -> None:
        """Stop following the policy file or store cluster."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._feed is not None:
            self._feed.stop()
            self._feed = None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deciding ----------------------------------------------------------------------

    @cached_property
    def checkpoint(self) -> Checkpoint:
        """The enforcement checkpoint this guard decides and records through (built on
        first use from `holder`, `sink`, `cluster` and `report_only`)."""
        return Checkpoint(self.holder, self.sink, report_only=self.report_only,
                          cluster=self.cluster, point="callout")

    def check(self, callout_type: str, uri: str, *,
              addresses: Sequence[IPAddress | str] = ()) -> Decision:
        """Decide a `callout_type` call to `uri` and record it; never raises for bad input
        (an unparseable URI is a denial)."""
        active = self.holder.active
        cp = self.checkpoint
        try:
            ips = tuple(ipaddress.ip_address(a) for a in addresses)
        except ValueError as exc:
            raise ValueError(f"addresses: {exc}") from None
        try:
            decision = cp.decide_in(active.snapshot, Request.from_url(
                uri, kind=Kind.CALLOUT, callout_type=callout_type, addresses=ips))
        except Exception as exc:  # fail closed: an engine error must not become a pass
            log.exception("deciding %s callout to %s failed", callout_type, uri)
            decision, _ = cp.guard_deny(
                "guard:error", f"Callout to '{uri}' is not allowed by the callout policy "
                f"(internal error: {exc}) {CALLOUT_ERROR}", uri, snapshot=active.snapshot)
        cp.enforce_sync(decision, cp.permit(decision), "callout", host=decision.destination,
                        policy_version=active.version,
                        resolved_address=",".join(map(str, ips)), path=uri,
                        callout_type=callout_type)
        return decision

    def permitted(self, decision: Decision) -> bool:
        """What to do with `decision`: the checkpoint's report-only (the policy's flags
        ORed with this guard's `report_only`)."""
        return self.checkpoint.permit(decision)

    def require(self, callout_type: str, uri: str, *,
                addresses: Sequence[IPAddress | str] = ()) -> Decision:
        """`check`, raising `CalloutDenied` unless the callout is permitted."""
        decision = self.check(callout_type, uri, addresses=addresses)
        if not self.permitted(decision):
            raise CalloutDenied(decision, callout_type, uri)
        return decision

    # -- HTTP client integration -------------------------------------------------------

    def httpx_hook(self, callout_type: str) -> Callable[[httpx.Request], None]:
        """An httpx request event hook that raises `CalloutDenied` before a denied request
        is sent: ``httpx.Client(event_hooks={"request": [guard.httpx_hook("webapi")]})``.
        Redirects are requests too, so each hop is decided."""

        def hook(request: httpx.Request) -> None:
            self.require(callout_type, str(request.url))

        return hook

    def async_httpx_hook(self, callout_type: str
                         ) -> Callable[[httpx.Request], Awaitable[None]]:
        """The same hook for `httpx.AsyncClient`."""

        async def hook(request: httpx.Request) -> None:
            self.require(callout_type, str(request.url))

        return hook

