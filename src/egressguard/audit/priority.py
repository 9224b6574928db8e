"""The audit writer child's CPU priority: in the background while it keeps up, normal as
soon as it falls behind or someone waits for it.

Why: the writer child seals and commits in bursts (a few milliseconds of CPU per linger
period). Scheduled like the gateway's own work, a burst holds its core for a whole slice,
and a request whose task wakes on that core waits behind it: at one connection the
audited p99 was 3.5 ms against 0.3 ms unaudited. As a SCHED_IDLE task the writer gives
its core to any woken task at once, and the kernel places woken tasks on its core as on
an idle one, so its work fills the gaps between requests instead.

SCHED_IDLE has almost no weight, though: with every core busy the writer would starve
while events pile up (and would be dropped once `max_pending` are queued). So the one
who decides is the gateway's side of the pipe, a normal-priority thread that is never
starved and sees what matters: the frames the child has not acknowledged. `Pacer`
decides (pure); `WriterPriority` applies its answer to the child with
`sched_setscheduler`, only on a change, and only where the child can also be put back
(an unprivileged process may lower a task to SCHED_IDLE but not raise it again without
CAP_SYS_NICE or RLIMIT_NICE >= 20: without those it stays at normal priority).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from dataclasses import dataclass

log = logging.getLogger("egressguard.audit")

CAP_SYS_NICE = 23      # capabilities(7)


@dataclass(frozen=True)
class Pacer:
    """When the writer may run in the background.

    Only once it has plainly kept up for `calm_for` seconds: at most one frame
    unacknowledged (the one just sent), none older than `late_after` seconds, and nobody
    waiting for an acknowledgement (a refusal held until its record is durable, a
    flush). Anything else means the writer's progress is what someone waits for, or soon
    will, and lifts it at once. Under a sustained load it so stays at normal priority
    most of the time: in the background it would get so little CPU that the gateway,
    given the writer's share, would queue events faster than it writes them, and the
    queue would fill (and drop) before a lift.
    """

    late_after: float = 0.1
    calm_for: float = 2.0

    def keeps_up(self, unacknowledged: int, oldest_sent: float | None, waited_for: bool,
                 now: float) -> bool:
        if waited_for or unacknowledged > 1:
            return False
        return oldest_sent is None or now - oldest_sent < self.late_after

    def background(self, calm_since: float | None, now: float) -> bool:
        """Whether a writer that has kept up since `calm_since` (None: it does not now)
        may go to the background."""
        return calm_since is not None and now - calm_since >= self.calm_for


def can_return_to_normal(status: str, nice_limit: int) -> bool:
    """Whether this process may raise a SCHED_IDLE task back to normal priority:
    `status` is /proc/self/status, `nice_limit` the soft RLIMIT_NICE (nice 0 is allowed
    from 20 up, setrlimit(2))."""
    if nice_limit == resource.RLIM_INFINITY or nice_limit >= 20:
        return True
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
            except (IndexError, ValueError):
                return False
    return False


def _supported() -> bool:
    if not (hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")):
        return False
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            status = f.read()
        limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (OSError, AttributeError, ValueError):
        return False
    return can_return_to_normal(status, limit)


class WriterPriority:
    """Applies `Pacer`'s answer to one child process (thread-safe; a no-op where the
    child could not be put back to normal priority, or `enabled` is False)."""

    def __init__(self, pacer: Pacer | None = None, enabled: bool = True) -> None:
        self.pacer = pacer or Pacer()
        self.enabled = enabled and _supported()
        self._lock = threading.Lock()
        self._pid = 0
        self._background = False
        self._calm_since: float | None = None   # kept up since (None: not now)

    @property
    def background(self) -> bool:
        """Whether the child is in the background now."""
        return self._background

    def attach(self, pid: int) -> None:
        """A new child (a restarted writer starts at normal priority)."""
        with self._lock:
            self._pid, self._background, self._calm_since = pid, False, None

    def update(self, unacknowledged: int, oldest_sent: float | None, waited_for: bool,
               now: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            if not self.pacer.keeps_up(unacknowledged, oldest_sent, waited_for, now):
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
            want = self.pacer.background(self._calm_since, now)
            if want == self._background or not self._pid:
                return
            policy = os.SCHED_IDLE if want else os.SCHED_OTHER
            try:
                os.sched_setscheduler(self._pid, policy, os.sched_param(0))
            except ProcessLookupError:   # the child is gone: the receiver restarts it
                return
            except OSError as exc:       # not allowed after all (`_supported` checks)
                log.warning("audit writer priority cannot be changed (%s); no more "
                            "changes are tried", exc)
                self.enabled = False
                return
            self._background = want
