"""A policy file kept in force in a `SnapshotHolder`: load, then hot reload on change.

One implementation for every enforcement point that runs from a file (the gateway with
`--policy`, the DNS filter, the library check). The watcher polls on a daemon thread, so
it serves asyncio servers and synchronous programs alike (`SnapshotHolder.swap` is
thread-safe and enforcement points re-check open connections on every swap); SIGHUP
handlers call `reload()`.

A change is loaded, validated and compiled first; only a policy that compiles replaces the
one in force, so a bad edit is logged with every reason and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from egressguard.catalog.compile import active_of, snapshot_for
from egressguard.engine import CompileError
from egressguard.engine.holder import Active, SnapshotHolder, loading
from egressguard.policy import Policy, PolicyError, load_policy_text
from egressguard.policy.builtins import UNRESTRICTED, fallback_name
from egressguard.policy.load import Problem

log = logging.getLogger("egressguard.source.file")


def load_active(path: str | os.PathLike[str]) -> Active:
    """Load and compile the policy file at `path`; raises `PolicyError`/`CompileError`/
    `OSError`. The version label is the first 12 hex digits of the file's SHA-256 (the
    label stays the same across restarts, so logs and audit records line up)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), [Problem("", None, f"not UTF-8 text: {exc}")]) from None
    snapshot = snapshot_for(load_policy_text(text, str(path)))
    return Active(snapshot, hashlib.sha256(raw).hexdigest()[:12], str(path))


class PolicyFileWatcher:
    """Reload `path` into `holder` when its mtime, size or inode changes (every `interval`
    seconds on a daemon thread once `start`ed) or when `reload()` is called (SIGHUP)."""

    def __init__(self, path: str | os.PathLike[str], holder: SnapshotHolder,
                 interval: float = 0.25) -> None:
        self.path = Path(path)
        self.holder = holder
        self.interval = interval
        self.last_error: str | None = None
        self._stamp = self._stat()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> bool:
        """Reload if the file changed since the last look; True if a new policy is in force."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        return self.reload(stamp)

    def reload(self, stamp: tuple[int, int, int] | None = None) -> bool:
        """Load the file now; True if it replaced the policy in force."""
        with self._lock:
            self._stamp = stamp or self._stat()
            try:
                with loading():
                    active = load_active(self.path)
            except (PolicyError, CompileError, OSError) as exc:
                self.last_error = str(exc)
                log.error("policy reload rejected, keeping version %s: %s",
                          self.holder.active.version, exc)
                return False
            self.last_error = None
            if active.version == self.holder.active.version:
                return False
            self.holder.swap(active)
            log.info("policy %s loaded: version %s", self.path, active.version)
            return True

    def start(self) -> PolicyFileWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let a surprise kill hot reload
                log.exception("policy watcher error")


def holder_for(path: str | os.PathLike[str] | None,
               fallback: Policy = UNRESTRICTED) -> SnapshotHolder:
    """A (not followed) holder with the policy file at `path` in force, or `fallback`
    for None. Raises `PolicyError`/`CompileError`/`OSError` for a bad file."""
    if path is None:
        return SnapshotHolder(active_of(fallback, "default", fallback_name(fallback)))
    return SnapshotHolder(load_active(path))
