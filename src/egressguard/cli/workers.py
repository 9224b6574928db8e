"""`serve --workers N`: N gateway processes on one port, the host's singletons in the parent.

Why processes: one event loop is one core; the kernel spreads the connections of a
SO_REUSEPORT port over the workers' listeners. What must stay one per host stays in the
parent (`serve` itself): the policy source (file watcher or store feed, SIGHUP), the audit
writer, the REST API, the fleet's singleton jobs and the cluster key's watch.

* Policy: the parent's holder is the one source; every swap is sent to every worker
  (`("policy", ...)`), which compiles it into its own holder: one policy in force through
  one checkpoint per process, and each worker reports the version it put in force.
* Audit: workers ship packed batches of events to the parent (`worker.RelaySink`), which
  forwards the bytes unchanged into its audit log (`AuditLog.forward`: the one writer per
  host, no event decoded or encoded again on the way); a refusal is acknowledged only once
  the audit log made it durable. Only watchers beside the log (`--exfil-threshold`'s
  `ExfilMonitor`) get the events decoded.
* Key suspension: `Workers` is a `Suspendable` point, relayed to every worker (and
  remembered for workers started later).
* A worker that dies is restarted (with a backoff); a worker whose parent dies fails
  closed (`worker.py`).
* Metrics: workers write Prometheus multiprocess files to a per-run directory; the API's
  `/metrics` serves the parent's registry merged with every worker's (`registry`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

from egressguard.audit.log import AuditLog, Packed, event_of_raw, unpack_raws
from egressguard.cli.workerwire import Wire
from egressguard.enforce.events import EventSink
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.errors import EgressguardError

log = logging.getLogger("egressguard.gateway")
_BACKOFF_MAX = 5.0


def cores() -> int:
    """The cores this process may run on (the default `--workers`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WorkerFailed(EgressguardError):
    """A worker could not start (its one-line reason), e.g. the port is taken."""


class Workers:
    """Start, feed, restart and stop the worker processes."""

    def __init__(self, count: int, config: dict[str, Any], holder: SnapshotHolder,
                 sink: EventSink | None, audit: AuditLog | None = None) -> None:
        """`config`: what every worker's gateway is built from (see `worker.Worker`);
        `sink`: the parent's audit sink (None with --no-audit): `audit`, the audit log,
        alone or in a `FanoutSink` with watchers."""
        self.config = config
        self.holder = holder
        self.audit = audit if sink is not None else None
        self.watchers = [s for s in getattr(sink, "sinks", (sink,))
                         if s is not None and s is not audit]
        self.suspended: str | None = None
        self.stopping = False
        self.metrics_dir = tempfile.mkdtemp(prefix="egressguard-metrics-")
        self.slots = [_Slot(self, i) for i in range(count)]
        self._unsubscribe = holder.subscribe(self._swapped)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every worker and wait until each listens; `WorkerFailed` if one cannot."""
        for slot in self.slots:
            slot.thread.start()
        for slot in self.slots:
            if not slot.started.wait(timeout):
                raise WorkerFailed(f"worker {slot.index} did not start within {timeout:g} s")
            if slot.failure is not None:
                raise WorkerFailed(slot.failure)

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker (each drains its connections and ships its last events),
        wait up to `timeout` seconds, then kill what is left."""
        self.stopping = True
        self._unsubscribe()
        for slot in self.slots:
            slot.signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for slot in self.slots:
            if slot.thread.is_alive():
                slot.thread.join(max(0.0, end - time.monotonic()))
            if slot.thread.is_alive():
                log.error("worker %s did not stop within %g s; killing it", slot.pid,
                          timeout)
                slot.signal(signal.SIGKILL)
                slot.thread.join(5)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [slot.pid for slot in self.slots if slot.pid]

    @property
    def versions(self) -> dict[int, str]:
        """The policy version each live worker reported in force, by pid."""
        return {slot.pid: slot.version for slot in self.slots if slot.pid}

    # -- what the parent relays --------------------------------------------------------

    def _swapped(self, active: Active) -> None:
        for slot in self.slots:
            slot.send("policy", *_policy_of(active))

    def suspend(self, reason: str) -> None:
        self.suspended = reason or "suspended"
        for slot in self.slots:
            slot.send("suspend", self.suspended)

    def resume(self) -> None:
        self.suspended = None
        for slot in self.slots:
            slot.send("resume")

    def registry(self) -> CollectorRegistry:
        """This process's metrics merged with every worker's, for the API's `/metrics`."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.metrics_dir))
        return registry


def _policy_of(active: Active) -> tuple[Any, str, str]:
    return active.snapshot.policy, active.version, active.source


class _Slot:
    """One worker's place: its thread spawns the process, relays its messages until it
    ends, and spawns it again unless the fleet is stopping."""

    def __init__(self, fleet: Workers, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.pid = 0
        self.version = ""
        self.failure: str | None = None
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._wire: Wire | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # The process is spawned by this thread, which lives as long as the slot:
        # PR_SET_PDEATHSIG fires when the spawning thread ends.
        self.thread = threading.Thread(target=self._run, name=f"worker-{index}",
                                       daemon=True)

    def send(self, *message: Any) -> None:
        with self._lock:
            if self._wire is not None:
                self._wire.send(*message)

    def signal(self, sig: int) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(sig)

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Wire]:
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "egressguard.cli.worker", str(theirs.fileno()),
                 str(os.getpid())],
                pass_fds=[theirs.fileno()], process_group=0,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.fleet.metrics_dir})
        finally:
            theirs.close()
        wire = Wire(ours)
        with self._lock:  # under the lock: no swap is sent before the hello
            config = {**self.fleet.config, "policy": _policy_of(self.fleet.holder.active),
                      "suspended": self.fleet.suspended}
            wire.send("hello", config)
            self._wire, self._proc, self.pid = wire, proc, proc.pid
            if self.fleet.stopping:  # `stop` came while this one was being spawned
                proc.send_signal(signal.SIGTERM)
        return proc, wire

    def _run(self) -> None:
        backoff = 0.25
        while not self.fleet.stopping:
            began = time.monotonic()
            proc, wire = self._spawn()
            self._relay(wire)
            with self._lock:
                self._wire = None
            code = proc.wait()
            wire.close()
            _mark_dead(proc.pid, self.fleet.metrics_dir)
            if not self.started.is_set():  # never listened: a start-up failure
                self.failure = self.failure or f"worker exited with status {code} at start"
                self.started.set()
                return
            if self.fleet.stopping:
                return
            if time.monotonic() - began > 30:  # it ran a while: not a crash loop
                backoff = 0.25
            log.error("gateway worker %d exited (status %s); starting another in %g s",
                      proc.pid, code, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _relay(self, wire: Wire) -> None:
        acks = Acks(wire)
        try:
            self._relay_messages(wire, acks)
        finally:
            acks.close()

    def _relay_messages(self, wire: Wire, acks: Acks) -> None:
        while (message := wire.receive()) is not None:
            kind = message[0]
            if kind == "events":
                self._forward(acks, *message[1:])
            elif kind == "active":
                self.version = message[1]
                log.info("gateway worker %d: policy %s in force", self.pid, message[1])
            elif kind == "ready":
                self.started.set()
            elif kind == "failed":
                self.failure = message[1]

    def _forward(self, acks: Acks, last: int, urgent: bool, count: int,
                 data: bytes) -> None:
        """A worker's packed events into the audit log as they came; with `urgent` (a
        refusal waits), its acknowledgement once they are durable (never before: the
        worker refuses anyway when it does not come in time)."""
        fleet = self.fleet
        if fleet.audit is None:   # (a worker without the audit log sends no events)
            if urgent:
                acks.post(last)
            return
        try:
            seq = (fleet.audit.forward(Packed(count, data), durable=urgent) if count
                   else fleet.audit.last_seq)
        except Exception:  # as the checkpoint does: logged, never fatal
            log.exception("audit: events of worker %d not recorded", self.pid)
            return            # and not acknowledged: the refusal fails closed
        self._watch(data)
        if urgent:
            fleet.audit.when_durable(seq, lambda: acks.post(last))

    def _watch(self, data: bytes) -> None:
        if not self.fleet.watchers:
            return
        try:
            events = [event_of_raw(raw) for raw in unpack_raws(data)]
        except Exception:
            log.exception("audit: events of worker %d not readable", self.pid)
            return
        for watcher in self.fleet.watchers:
            for event in events:
                try:
                    watcher.emit(event)
                except Exception:
                    log.exception("audit: sink %r failed", watcher)
                    break


class Acks:
    """Acknowledgements to one worker, sent by a thread of their own.

    The audit writer calls back from its one acknowledgement thread, for every worker.
    Had it sent each acknowledgement itself, one worker not reading its socket (stopped,
    wedged, or just being sent a big policy frame) would hold that thread, and with it
    every other worker's refusals and the parent's own. Here the callback only records
    the highest seq and wakes this thread: acknowledgements are cumulative (the worker
    resolves every waiter up to the seq), so sending the latest one says it all.
    """

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._wanted = 0
        self._sent = 0
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="worker-acks", daemon=True)
        self._thread.start()

    def post(self, seq: int) -> None:
        """Acknowledge every event up to `seq` (never blocks)."""
        with self._ready:
            if seq > self._wanted:
                self._wanted = seq
                self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._wanted == self._sent and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                seq = self._sent = self._wanted
            if not self.wire.send("ack", seq):   # the worker is gone: nothing to tell
                return


def _mark_dead(pid: int, path: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


class _Merged:
    """The parent's own metrics (policy feed, audit writer) and the workers' (gateway),
    one family per name: where both report a series, the workers' is the real one."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        theirs = {f.name: f for f in MultiProcessCollector(None, self.path).collect()}
        for family in REGISTRY.collect():
            merged = theirs.pop(family.name, None)
            if merged is None:
                yield family
                continue
            seen = {(s.name, tuple(sorted(s.labels.items()))) for s in merged.samples}
            merged.samples += [s for s in family.samples
                               if (s.name, tuple(sorted(s.labels.items()))) not in seen]
            yield merged
        yield from theirs.values()
