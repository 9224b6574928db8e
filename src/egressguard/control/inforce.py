"""What the API describes and edits: the store's clusters, or the policy file a gateway
enforces (`egressguard serve --policy F`).

A gateway in file mode enforces the file, not any store cluster, so its API must not show
or take edits of the store's policy (a `/v1/check` that said deny for a name the proxy
allowed, and edits answered 200 that changed nothing, were the result). `FileBook` stands
in for the store in every policy read and write of the API, the Kusto-style commands and
the dashboard (all go through a `PolicyBook`):

* reads show the file's policy in force (the gateway's own holder, so what the proxy
  enforces at this moment) as the one cluster this gateway serves; the version number
  counts the file's contents seen by this process, `policyFileVersion` is the file's hash;
* every write (PUT/PATCH, rule collections, rollback, `.alter`, `.delete`) is refused
  with 409 `PolicyFromFile`, naming the file: nothing is stored.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

from egressguard.control.errors import Refused
from egressguard.engine import Snapshot
from egressguard.engine.holder import SnapshotHolder
from egressguard.policy import Policy, dump_policy
from egressguard.store import NotFound, Version


class PolicyBook(Protocol):
    """The policy reads and writes the API needs (a `Store` is one)."""

    def clusters(self) -> list[str]: ...
    def current(self, name: str) -> Version: ...
    def version(self, name: str, number: int) -> Version: ...
    def versions(self, name: str, limit: int = 100) -> list[Version]: ...
    def diff(self, name: str, a: int, b: int) -> str: ...
    def commit(self, name: str, policy: Policy, principal: str, summary: str, *,
               create: bool = False) -> Version: ...
    def rollback(self, name: str, number: int, principal: str) -> Version: ...


class PolicyFromFile(Refused):
    """A policy write to a gateway that enforces a policy file."""

    code = "PolicyFromFile"


class FileBook:
    """The policy file in force in `holder`, shown as cluster `cluster`; writes refused."""

    def __init__(self, path: str | Path, cluster: str, holder: SnapshotHolder) -> None:
        self.path = str(path)
        self.cluster = cluster
        self.holder = holder
        self._lock = threading.Lock()
        self._seen: tuple[str, Version] | None = None

    # -- reads -------------------------------------------------------------------------

    def clusters(self) -> list[str]:
        return [self.cluster]

    def current(self, name: str) -> Version:
        self._served(name)
        active = self.holder.active
        with self._lock:
            if self._seen is None or self._seen[0] != active.version:
                number = self._seen[1].number + 1 if self._seen else 1
                self._seen = (active.version, self._version(number, active.snapshot.policy,
                                                            active.version))
            return self._seen[1]

    def snapshot(self, name: str) -> tuple[str, Snapshot]:
        """(the file's version label, the snapshot the gateway enforces now)."""
        self._served(name)
        active = self.holder.active
        return active.version, active.snapshot

    def version(self, name: str, number: int) -> Version:
        found = self.current(name)
        if number != found.number:
            raise NotFound(f"cluster {name!r} has no version {number}: this gateway "
                           f"enforces the policy file {self.path}, whose earlier contents "
                           "are not kept")
        return found

    def versions(self, name: str, limit: int = 100) -> list[Version]:
        return [self.current(name)][:max(limit, 0)]

    def diff(self, name: str, a: int, b: int) -> str:
        self.version(name, a)
        self.version(name, b)
        return ""  # the one version there is, compared with itself

    def describe(self, resource: dict[str, Any]) -> dict[str, Any]:
        """An ARM resource of the file's cluster, saying where its policy comes from."""
        resource["properties"].update(policySource="file", policyFile=self.path,
                                      policyFileVersion=self.holder.active.version)
        return resource

    # -- writes ------------------------------------------------------------------------

    def refusal(self) -> PolicyFromFile:
        return PolicyFromFile(f"this gateway enforces the policy file {self.path}; edit the "
                              "file, or run serve without --policy")

    def commit(self, name: str, policy: Policy, principal: str, summary: str, *,
               create: bool = False) -> NoReturn:
        raise self.refusal()

    def rollback(self, name: str, number: int, principal: str) -> NoReturn:
        raise self.refusal()

    # -- helpers -----------------------------------------------------------------------

    def _served(self, name: str) -> None:
        if name != self.cluster:
            raise NotFound(f"cluster {name!r} is not in force here: this gateway enforces "
                           f"the policy file {self.path} (shown as cluster "
                           f"{self.cluster!r})")

    def _version(self, number: int, policy: Policy, label: str) -> Version:
        try:
            changed = datetime.fromtimestamp(Path(self.path).stat().st_mtime, UTC)
        except OSError:
            changed = datetime.now(UTC)
        return Version(self.cluster, number, policy, dump_policy(policy), "policy file",
                       changed, f"policy file {self.path} (sha256 {label})")


__all__ = ["FileBook", "PolicyBook", "PolicyFromFile"]
