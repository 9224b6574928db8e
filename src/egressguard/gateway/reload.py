"""Keep the holder in step with a policy file: SIGHUP or a changed file reloads it.

A file that fails to load or compile is logged with every reason and the running policy
stays in force; only a snapshot that compiled replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

from egressguard.engine import CompileError, References, compile_policy
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.policy import PolicyError, load_policy_text

log = logging.getLogger("egressguard.gateway")
POLL_SECONDS = 0.25


def _references() -> References:
    """Catalog references (FQDN tags, service tags, aliases) when the catalog exists."""
    try:
        from egressguard.catalog import references
    except ImportError:
        return References()
    result: References = references()
    return result


def load_active(path: Path, refs: References | None = None) -> Active:
    """Load and compile a policy file; raises PolicyError/CompileError/OSError."""
    text = path.read_text(encoding="utf-8")
    snapshot = compile_policy(load_policy_text(text, str(path)), refs or _references())
    version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Active(snapshot, version, str(path))


class PolicyFile:
    """Watches one policy file and swaps the holder when it changes."""

    def __init__(self, path: Path, holder: SnapshotHolder,
                 refs: References | None = None) -> None:
        self.path = path
        self.holder = holder
        self.refs = refs
        self._stamp = self._stat()
        self._task: asyncio.Task[None] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Load the file now; swap on success. Returns whether the policy changed."""
        self._stamp = self._stat()
        try:
            active = load_active(self.path, self.refs)
        except (PolicyError, CompileError, OSError, UnicodeError) as exc:
            log.error("gateway: policy reload rejected, keeping version %s: %s",
                      self.holder.active.version, exc)
            return False
        if active.version == self.holder.active.version:
            return False
        self.holder.swap(active)
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self._stat() != self._stamp:
                self.reload()
