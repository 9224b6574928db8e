"""The durable audit log writer: events queue in memory and a thread writes them in batches.

The hot path only appends to a queue (`emit`, a few hundred nanoseconds, never blocks).
One writer thread drains whatever is queued into one transaction and then wakes the
callers waiting for it (group commit). While nobody waits for an acknowledgement it lingers
up to `max_delay` (50 ms) to fill a batch, since each commit costs an fsync; a `record` or
`flush` call ends the linger at once, so a denial waits for one commit, not for the timer.

Durability, exactly:

* An event is **acknowledged** when `await log.record(event)` returns, or when
  `log.flush()` / `await log.flush_for()` returns (these cover every event whose `emit`
  returned before the call, except events `emit` dropped, see below).
* Acknowledged means the transaction holding the event has committed: on SQLite with
  `journal_mode=WAL, synchronous=FULL`, so the WAL was fsynced; on PostgreSQL the COMMIT
  returned (durable under its defaults `fsync=on, synchronous_commit=on`). An acknowledged
  event therefore survives kill -9 of the process (and, on SQLite, power loss).
* Events that were emitted but not yet acknowledged may be lost on kill -9: at most the
  queue plus the batch being written.
* `emit` never blocks: when `max_pending` events are already queued (the database is
  down or too slow) it drops the event and counts it in
  `egressguard_audit_events_total{result="dropped"}`. `record` never drops (its caller
  waits, so its memory is bounded by the callers), and raises `AuditUnavailable`
  (a `TimeoutError`) when the event is not durable within its timeout.
* A failed write is retried with backoff, never discarded; an ambiguous commit (error
  after the server committed) is recognised by the batch's (writer, seq) key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from egressguard.audit import metrics
from egressguard.audit.crypto import (
    CLEAR_FIELDS,
    NONCE,
    Sealer,
    associated,
    load_or_create_key,
)
from egressguard.audit.db import make_engine, migrate
from egressguard.audit.events import DecisionEvent
from egressguard.audit.schema import batches, events

log = logging.getLogger("egressguard.audit")

GENESIS = b"\0" * 32
_STOP = object()


class AuditUnavailable(TimeoutError):
    """The audit log could not make an event durable in time."""


@dataclass(frozen=True)
class Retention:
    """Keep at most `max_age_s` seconds and/or `max_rows` events (pruned every `every_s`)."""

    max_age_s: float | None = None
    max_rows: int | None = None
    every_s: float = 60.0


def clear_values(event: DecisionEvent) -> tuple[Any, ...]:
    """The clear columns of one event, in `CLEAR_FIELDS` order, with canonical types
    (plain str/int/float/bool, so that the associated data reads back identically)."""
    return (float(event.time), str(event.cluster), str(event.phase), str(event.kind),
            str(event.host), None if event.port is None else int(event.port),
            str(event.resolved_address), str(event.protocol), str(event.callout_type),
            str(event.verdict), bool(event.permitted), str(event.layer), str(event.rule),
            str(event.policy_version), str(event.connection_id), int(event.bytes_up),
            int(event.bytes_down), float(event.duration_s), str(event.close_cause))


def secret_values(event: DecisionEvent) -> tuple[str, ...]:
    """The sealed fields of one event, in `SECRET_FIELDS` order."""
    return (str(event.client_address), str(event.client_identity), str(event.method),
            str(event.path), str(event.reason))


_COLUMNS = ("batch_id", *CLEAR_FIELDS, "payload")
Pair = tuple[tuple[Any, ...], tuple[str, ...]]


def pairs_of(batch: list[DecisionEvent]) -> list[Pair]:
    """(clear values, sealed values) of each event; a malformed event is dropped (logged
    and counted) so that it can never wedge the writer in its retry loop."""
    out = []
    for event in batch:
        try:
            out.append((clear_values(event), secret_values(event)))
        except (TypeError, ValueError, UnicodeError):
            metrics.AUDIT_EVENTS.labels("invalid").inc()
            log.error("audit: unrecordable event dropped: %r", event)
    return out


class AuditLog:
    """An `EventSink` writing every event to the audit tables of the store at `url`."""

    def __init__(self, url: str | URL | None = None, *, key: bytes | None = None,
                 batch_size: int = 2000, max_pending: int = 100_000,
                 max_delay: float = 0.05,
                 retention: Retention | None = None, engine: Engine | None = None,
                 start: bool = True) -> None:
        if engine is None:
            if url is None:
                from egressguard.paths import default_store_url
                url = default_store_url()
            engine = make_engine(url)
        self.engine = engine
        migrate(self.engine)
        self.sealer = Sealer(key if key is not None else load_or_create_key())
        self.batch_size = batch_size
        self.max_delay = max_delay
        self._urgent = threading.Event()     # someone waits for an acknowledgement
        self.max_pending = max_pending
        self.retention = retention
        self.writer_id = secrets.token_hex(8)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()        # orders seq assignment with queue order
        self._wait_lock = threading.Lock()
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._last_seq = 0                   # last seq handed out
        self._acked = 0                      # every queued seq <= this is committed
        self._dropped = 0
        self._seq = 0                        # batch sequence of this writer's chain
        self._prev_mac = GENESIS
        self._next_prune = time.monotonic()
        self._closed = False
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_sql = (f"INSERT INTO {events.name} ({', '.join(_COLUMNS)}) "
                            f"VALUES ({', '.join([mark] * len(_COLUMNS))})")
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        if start:
            self._thread.start()

    # -- hot path ------------------------------------------------------------------------

    def emit(self, event: DecisionEvent) -> None:
        """Queue `event` (fire-and-forget; never blocks; drops when `max_pending` queued)."""
        self._enqueue(event, force=False)

    def _enqueue(self, event: DecisionEvent, *, force: bool) -> int:
        with self._lock:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            if not force and self._last_seq - self._acked >= self.max_pending:
                self._dropped += 1
                metrics.AUDIT_EVENTS.labels("dropped").inc()
                if self._dropped & (self._dropped - 1) == 0:  # log at 1, 2, 4, 8, ...
                    log.error("audit queue full (%d pending): %d events dropped",
                              self.max_pending, self._dropped)
                return 0
            self._last_seq += 1
            seq = self._last_seq
            self._queue.put((seq, event))
        return seq

    async def record(self, event: DecisionEvent, timeout: float = 10.0) -> None:
        """Write `event` and return once it is committed (raises `AuditUnavailable`)."""
        await self._wait_async(self._enqueue(event, force=True), timeout)

    async def flush_for(self, event: DecisionEvent | None = None,
                        timeout: float = 10.0) -> None:
        """Return once every event emitted before this call is committed."""
        await self._wait_async(self._last_seq, timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Blocking `flush_for`, for threads and scripts."""
        target = self._last_seq
        done = threading.Event()
        if self._register(target, done.set) and not done.wait(timeout):
            raise AuditUnavailable(f"audit events not durable after {timeout} s")

    @property
    def acknowledged(self) -> int:
        """How many queued events are committed (all with seq <= this)."""
        return self._acked

    @property
    def dropped(self) -> int:
        return self._dropped

    def _register(self, target: int, callback: Callable[[], None]) -> bool:
        """Arrange `callback` once `target` is committed; False if it already is."""
        with self._wait_lock:
            if self._acked >= target:
                return False
            self._waiters.append((target, callback))
        self._urgent.set()
        return True

    async def _wait_async(self, target: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, future)

        if not self._register(target, wake):
            return
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AuditUnavailable(f"audit event not durable after {timeout} s") from None

    # -- writer thread -------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._urgent.set()
        self._thread.join(timeout)
        self.engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            self._urgent.clear()   # a waiter registering from now on sets it again
            batch = [item]
            stop = self._drain(batch)
            # Group commit: while nobody waits for an acknowledgement, linger up to
            # `max_delay` so that one commit (one fsync) carries many events.
            if not stop and len(batch) < self.batch_size and not self._waiters:
                self._urgent.wait(self.max_delay)
                stop = self._drain(batch)
            self._write_until_done(batch)
            self._maybe_prune()

    def _drain(self, batch: list[Any]) -> bool:
        """Move queued events into `batch` (up to `batch_size`); True if told to stop."""
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _write_until_done(self, batch: list[tuple[int, DecisionEvent]]) -> None:
        self.write_pairs(pairs_of([event for _, event in batch]))
        self._acknowledge(batch[-1][0])

    def write_pairs(self, pairs: list[Pair]) -> None:
        """Write one batch, retrying until it is committed (never discards it)."""
        if not pairs:
            return
        delay = 0.05
        while True:
            try:
                started = time.perf_counter()
                self._write(pairs)
                metrics.AUDIT_COMMIT_SECONDS.observe(time.perf_counter() - started)
                break
            except Exception:
                metrics.AUDIT_EVENTS.labels("failed").inc(len(pairs))
                log.exception("audit write of %d events failed; retrying in %.2f s",
                              len(pairs), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        metrics.AUDIT_EVENTS.labels("written").inc(len(pairs))

    def _write(self, pairs: list[Pair]) -> None:
        rows, payloads = [], []
        nonces = os.urandom(NONCE * len(pairs))
        seal = self.sealer.seal
        for i, (clear, secret) in enumerate(pairs):
            payloads.append(seal(secret, associated(clear), nonces[i * NONCE:(i + 1) * NONCE]))
            rows.append(clear)
        mac = self.sealer.chain(self._prev_mac, self.writer_id, self._seq, payloads)
        head = {"writer": self.writer_id, "seq": self._seq, "count": len(rows),
                "first_time": rows[0][0], "last_time": rows[-1][0],
                "prev_mac": self._prev_mac, "mac": mac}
        try:
            with self.engine.begin() as conn:
                key = conn.execute(batches.insert().values(head)).inserted_primary_key
                batch_id = key[0] if key is not None else None
                # Plain DB-API executemany: several times cheaper than Core's per-row binds.
                conn.exec_driver_sql(self._insert_sql, [
                    (batch_id, *clear, payload) for clear, payload in zip(
                        rows, payloads, strict=True)])
        except IntegrityError:
            # A retry after a commit whose reply was lost: the batch is already there.
            if not self._already_written(mac):
                raise
        self._prev_mac = mac
        self._seq += 1

    def _already_written(self, mac: bytes) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(batches.c.mac).where(
                batches.c.writer == self.writer_id, batches.c.seq == self._seq)).scalar()
        return found == mac

    def _acknowledge(self, seq: int) -> None:
        with self._wait_lock:
            self._acked = seq
            ready = [cb for target, cb in self._waiters if target <= seq]
            self._waiters = [(t, cb) for t, cb in self._waiters if t > seq]
        metrics.AUDIT_PENDING.set(self._last_seq - seq)
        for callback in ready:
            callback()

    def _maybe_prune(self) -> None:
        if self.retention is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.retention.every_s
        from egressguard.audit.query import prune
        try:
            removed = prune(self.engine, max_age_s=self.retention.max_age_s,
                            max_rows=self.retention.max_rows)
        except Exception:
            log.exception("audit pruning failed (will retry)")
            return
        if removed:
            log.info("audit retention removed %d events", removed)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
