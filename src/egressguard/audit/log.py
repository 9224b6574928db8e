"""The durable audit log writer: events queue in memory and a thread writes them in batches.

The hot path only appends the event object to a deque (`emit`: no encoding, no
allocation, a wake-up only when the writer sleeps, never blocks). One writer thread drains
whatever is queued into one transaction and then wakes the callers waiting for it (group
commit); all the per-record work (canonical values, AES-GCM, SQL) happens there, in as few
Python steps as possible (attribute tuples via `operator.attrgetter`, one multi-row
`INSERT` per 128 records, so the thread gives the GIL back to the event loop rarely).
While nobody waits for an acknowledgement it lingers up to `max_delay` (50 ms) to fill a
batch, since each commit costs an fsync; a `record` or `flush` call ends the linger at
once, so a denial waits for one commit, not for the timer.

Durability, exactly:

* An event is **acknowledged** when `await log.record(event)` returns, or when
  `log.flush()` / `await log.flush_for()` returns (these cover every event whose `emit`
  returned before the call, except events `emit` dropped, see below).
* Acknowledged means the transaction holding the event has committed: on SQLite with
  `journal_mode=WAL, synchronous=FULL`, so the WAL was fsynced; on PostgreSQL the COMMIT
  returned (durable under its defaults `fsync=on, synchronous_commit=on`). An acknowledged
  event therefore survives kill -9 of the process (and, on SQLite, power loss). While the
  store is unreachable, acknowledged means instead that the event's batch is fdatasync'ed
  in the local spool (see below): it survives kill -9 and power loss of this host.
* Events that were emitted but not yet acknowledged may be lost on kill -9: at most the
  queue plus the batch being written.
* `emit` never blocks: when `max_pending` events are already queued (the database is
  down or too slow) it drops the event and counts it in
  `egressguard_audit_events_total{result="dropped"}`. `record` never drops (its caller
  waits, so its memory is bounded by the callers), and raises `AuditUnavailable`
  (a `TimeoutError`) when the event is not durable within its timeout.
* `forward` (a batch a gateway worker packed, `serve --workers`) queues its events as one
  item, counted as many: dropped whole like `emit`'s when the queue is full, never with
  `durable=True` (a refusal in it waits: `when_durable` calls back after the commit).
* A write that fails because the database is unreachable goes to the spool (below), never
  discarded; an ambiguous commit (error after the server committed) is recognised by the
  batch's (writer, seq) key. A batch the database *refuses* is split in halves until the
  refused record is alone; that record is stored in its safe form (`bounds.safe_form`) or,
  failing that, dropped and counted as `invalid`, so one record never blocks the others.
  Every field is bounded before it is sealed (`bounds`: prefix plus hash).
* While the store is unreachable (connection refused or lost, database gone, SQLite
  locked past its busy timeout), each batch is sealed, chained and appended to the
  writer's local spool (`spool`: fdatasync'ed, mode 0600, under the data home) before its
  events are acknowledged: acknowledged still means durable, without waiting for the store
  (`degraded` is True meanwhile). Every `PROBE_S` the writer tries the store and, once it
  answers, writes the spool out in order and empties it; a batch already there (same
  writer, seq and MAC) is skipped, so nothing is written twice. A spool left by kill -9
  is written out by the next writer to take that slot. One log line per state change.
* Chains go on across runs and are anchored at both ends (see `lineage`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import marshal
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, groupby
from operator import attrgetter, ge, itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from egressguard.audit import metrics
from egressguard.audit.bounds import (
    SECRET_WIDTH,
    STRING_AT,
    STRING_WIDTHS,
    WIDTHS,
    bound_clear,
    bound_secret,
    safe_form,
    storable,
)
from egressguard.audit.crypto import (
    CLEAR_FIELDS,
    NONCE,
    SECRET_FIELDS,
    EnvelopeSealer,
    Sealer,
    load_or_create_key,
)
from egressguard.audit.db import make_engine, migrate
from egressguard.audit.events import DecisionEvent
from egressguard.audit.lineage import GENESIS, Slot, store_dir
from egressguard.audit.schema import batches, events, heads
from egressguard.audit.spool import Batch, Spool
from egressguard.errors import Unavailable

log = logging.getLogger("egressguard.audit")

PROBE_S = 1.0          # while degraded, try the store this often


class AuditUnavailable(TimeoutError, Unavailable):
    """The audit log could not make an event durable in time."""


@dataclass(frozen=True)
class Retention:
    """Keep at most `max_age_s` seconds and/or `max_rows` events (pruned every `every_s`)."""

    max_age_s: float | None = None
    max_rows: int | None = None
    every_s: float = 60.0


# -- events -> canonical rows ----------------------------------------------------------------

FIELDS = (*CLEAR_FIELDS, *SECRET_FIELDS)
Raw = tuple[Any, ...]                     # an event's values in `FIELDS` order
raw_of: Callable[[DecisionEvent], Raw] = attrgetter(*FIELDS)
_NCLEAR = len(CLEAR_FIELDS)
_NSECRET = len(SECRET_FIELDS)
_CAST: tuple[type, ...] = (float, str, str, str, str, int, str, str, str, str, bool, str, str,
                           str, str, int, int, float, str) + (str,) * _NSECRET
_PORT = CLEAR_FIELDS.index("port")
# The exact types the reader authenticates (`query.clear_of`); a raw tuple of these needs
# no conversion (the common case: one `map(type, ...)` instead of 24 casts).
_CAST_NO_PORT = (*_CAST[:_PORT], type(None), *_CAST[_PORT + 1:])
_CANONICAL = {_CAST, _CAST_NO_PORT}
_STRINGS = itemgetter(*STRING_AT)        # the clear string columns, for the bounds check
_HOST = CLEAR_FIELDS.index("host")
_ADDR = CLEAR_FIELDS.index("resolved_address")
_CONN = CLEAR_FIELDS.index("connection_id")
_HOST_W, _ADDR_W, _CONN_W = (WIDTHS[i] or 0 for i in (_HOST, _ADDR, _CONN))
# The other string columns: few distinct combinations (checked once each, `_fits`).
_FEW = itemgetter(*(i for i in STRING_AT if i not in (_HOST, _ADDR, _CONN)))


def canonical(raw: Raw) -> Raw:
    """`raw` with canonical types (plain str/int/float/bool, port int or None), so that
    the associated data reads back identically; raises TypeError/ValueError if it can't."""
    if tuple(map(type, raw)) in _CANONICAL:
        return raw
    if len(raw) != len(_CAST):
        raise ValueError(f"expected {len(_CAST)} fields, got {len(raw)}")
    return tuple(None if i == _PORT and v is None else cast(v)
                 for i, (cast, v) in enumerate(zip(_CAST, raw, strict=True)))


def raw_or_drop(event: DecisionEvent) -> Raw | None:
    """The raw field tuple of `event`, or None for an object that is not an event (it
    is dropped, logged and counted as invalid): what an audit queue holds."""
    try:
        return raw_of(event)
    except AttributeError:
        _invalid(event)
        return None


def raws_of(batch: Iterable[DecisionEvent]) -> list[Raw]:
    """The raw field tuples of `batch` (an object that is not an event is dropped)."""
    try:
        return list(map(raw_of, batch))
    except AttributeError:
        return [raw for event in batch if (raw := raw_or_drop(event)) is not None]


class Packed(NamedTuple):
    """`events` events already packed by `pack_raws` (a gateway worker's batch): queued
    and shipped to the writer as they are, never decoded in between (`AuditLog.forward`)."""

    events: int
    data: bytes


def pack_raws(raws: list[Raw]) -> bytes:
    """`raws` as one marshalled list (a field of an unusual type is converted, or its event
    dropped and logged): what `unpack_raws` and the writer child read."""
    try:
        return marshal.dumps(raws, 2)
    except ValueError:
        fixed = []
        for raw in raws:
            try:
                fixed.append(canonical(raw))
            except (TypeError, ValueError, UnicodeError):
                _invalid(raw)
        return marshal.dumps(fixed, 2)


def unpack_raws(data: bytes | memoryview) -> list[Raw]:
    raws: list[Raw] = marshal.loads(data)
    return raws


def event_of_raw(raw: Raw) -> DecisionEvent:
    """The event of a raw tuple (for the watchers of forwarded events, `ExfilMonitor`)."""
    return DecisionEvent(**dict(zip(FIELDS, raw, strict=True)))


def segments(batch: list[Any]) -> Iterator[tuple[bool, bytes, list[Raw]]]:
    """`batch` (events' raw tuples and `Packed` items, in queue order) as runs:
    (True, data, []) for a packed batch, (False, b"", raws) for consecutive events."""
    if not any(type(item) is Packed for item in batch):
        yield False, b"", batch
        return
    for packed, run in groupby(batch, key=lambda item: type(item) is Packed):
        if packed:
            for item in run:
                yield True, item.data, []
        else:
            yield False, b"", list(run)


def _invalid(what: object) -> None:
    metrics.AUDIT_EVENTS.labels("invalid").inc()
    log.error("audit: unrecordable event dropped: %r", what)


_COLUMNS = (*CLEAR_FIELDS, "payload", "batch_id")
_CHUNK = 128      # rows per INSERT statement (x 21 parameters: far below every limit)


class AuditLog:
    """An `EventSink` writing every event to the audit tables of the store at `url`."""

    def __init__(self, url: str | URL | None = None, *, key: bytes | None = None,
                 batch_size: int = 2000, max_pending: int = 100_000,
                 max_delay: float = 0.05,
                 retention: Retention | None = None, engine: Engine | None = None,
                 start: bool = True, envelope: Any = None) -> None:
        if engine is None:
            if url is None:
                from egressguard.paths import default_store_url
                url = default_store_url()
            engine = make_engine(url)
        self.engine = engine
        self._migrated = False
        try:
            migrate(self.engine)
            self._migrated = True
        except Exception as exc:  # store down at start: spool, migrate when it is back
            if not unavailable(exc):
                raise
        self.sealer = Sealer(key if key is not None else load_or_create_key())
        # With a customer-managed key (`keys.envelope.Envelope`) every batch is sealed under
        # a data key it wraps; the local key still opens older, headerless batches.
        self.envelope = envelope
        self.reader = EnvelopeSealer(envelope, legacy=self.sealer)
        self._suspended_since = 0.0
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_pending = max_pending
        self.retention = retention
        self.writer_id = ""                  # set by `_resume` (a stable slot, `lineage`)
        self._slot: Slot | None = None
        self._spool: Spool | None = None
        self._degraded = False
        self._next_probe = 0.0
        self._fitting: set[tuple[Any, ...]] = set()   # see `_fits`
        # Queue order is sequence order: the n-th event appended has seq n (both under
        # `_lock`), so the writer only counts what it takes (`_taken`).
        self._pending: deque[Any] = deque()   # events' raw tuples and `Packed` batches
        self._lock = threading.Lock()
        self._wake = threading.Event()       # set by `emit` only while the writer sleeps
        self._idle = False
        self._urgent = threading.Event()     # someone waits for an acknowledgement
        self._stopping = False
        self._wait_lock = threading.Lock()
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._last_seq = 0                   # last seq handed out
        self._taken = 0                      # seq of the last event the writer dequeued
        self._acked = 0                      # every queued seq <= this is committed
        self._dropped = 0
        self._packed = 0                     # `Packed` items in the queue
        self._seq = 0                        # batch sequence of this writer's chain
        self._prev_mac = GENESIS
        self._next_prune = time.monotonic()
        self._closed = False
        self._sql: dict[int, str] = {}
        self._mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        if start:
            self._thread.start()

    # -- hot path ------------------------------------------------------------------------

    def emit(self, event: DecisionEvent) -> None:
        """Queue `event` (fire-and-forget; never blocks; drops when `max_pending` queued).

        What is queued is the event's field tuple (`raw_of`), taken now: a tuple of plain
        values leaves the cycle collector's tracking at its first pass, whereas an event
        object waiting in the queue ages into the oldest generation and every full pass
        walks it (~1.4 µs per event under load), and the sender has nothing to convert."""
        if (raw := raw_or_drop(event)) is None:
            return
        with self._lock:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            if self._last_seq - self._acked >= self.max_pending:
                self._drop()
                return
            self._last_seq += 1
            self._pending.append(raw)
        if self._idle:
            self._wake.set()

    def forward(self, packed: Packed, durable: bool = False) -> int:
        """Queue a packed batch of events (fire-and-forget unless `durable`: then never
        dropped, like `record`); the seq that acknowledges it (`when_durable`), or 0 if
        it was dropped because `max_pending` events are already queued."""
        with self._lock:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            if not durable and self._last_seq - self._acked >= self.max_pending:
                self._drop(packed.events)
                return 0
            self._last_seq += packed.events
            self._packed += 1
            self._pending.append(packed)
            seq = self._last_seq
        if self._idle or durable:
            self._wake.set()
        return seq

    def when_durable(self, seq: int, callback: Callable[[], None]) -> None:
        """Call `callback` (from the writer's thread, or now) once `seq` is committed."""
        if not self._register(seq, callback):
            callback()

    def _drop(self, count: int = 1) -> None:
        self._dropped += count
        metrics.AUDIT_EVENTS.labels("dropped").inc(count)
        if self._dropped & (self._dropped - 1) == 0:  # log at 1, 2, 4, 8, ...
            log.error("audit queue full (%d pending): %d events dropped",
                      self.max_pending, self._dropped)

    def _enqueue_forced(self, event: DecisionEvent) -> int:
        if (raw := raw_or_drop(event)) is None:
            return self._last_seq   # nothing of its own to wait for
        with self._lock:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            self._last_seq += 1
            self._pending.append(raw)
            seq = self._last_seq
        self._wake.set()
        return seq

    async def record(self, event: DecisionEvent, timeout: float = 10.0) -> None:
        """Write `event` and return once it is committed (raises `AuditUnavailable`)."""
        await self._wait_async(self._enqueue_forced(event), timeout)

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
    def last_seq(self) -> int:
        """The seq of the last event queued (`when_durable(last_seq, ...)`: all of them)."""
        return self._last_seq

    @property
    def acknowledged(self) -> int:
        """How many queued events are committed (all with seq <= this)."""
        return self._acked

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def degraded(self) -> bool:
        """True while the store is unreachable and records go to the local spool
        (still durable before they are acknowledged; written to the store on recovery)."""
        return self._degraded

    def _register(self, target: int, callback: Callable[[], None]) -> bool:
        """Arrange `callback` once `target` is committed; False if it already is."""
        with self._wait_lock:
            if self._acked >= target:
                return False
            self._waiters.append((target, callback))
        self._urgent.set()
        self._wake.set()
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
        if not self._stop():
            return
        self._thread.join(timeout)
        self.engine.dispose()

    def _stop(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        self._stopping = True
        self._urgent.set()
        self._wake.set()
        return True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _next_batch(self) -> tuple[list[Any], int] | None:
        """Wait for events, linger for more (group commit), and take up to `batch_size`:
        (events, seq of the last one), or None once stopping and nothing is left."""
        pending = self._pending
        while not pending:
            if self._stopping:
                return None
            self._wake.clear()
            self._idle = True
            if not pending and not self._stopping:   # re-check: `emit` saw _idle False
                self._wake.wait(self._sleep_for())
            self._idle = False
            self.tick()
        self._urgent.clear()   # a waiter registering from now on sets it again
        # Group commit: while nobody waits for an acknowledgement, linger up to
        # `max_delay` so that one commit (one fsync) carries many events.
        if len(pending) < self.batch_size and not self._waiters and not self._stopping:
            self._urgent.wait(self.max_delay)
        with self._lock:   # (only so that seq and queue position stay in step)
            if not self._packed:
                take = min(len(pending), self.batch_size)
                batch = [pending.popleft() for _ in range(take)]
            else:   # forwarded batches are queued: each counts (and fills) as its events
                batch, take = [], 0
                while pending and take < self.batch_size:
                    batch.append(item := pending.popleft())
                    if type(item) is Packed:
                        self._packed -= 1
                        take += item.events
                    else:
                        take += 1
            self._taken += take
            return batch, self._taken

    def _sleep_for(self) -> float | None:
        """How long the idle writer may sleep: until the next prune or store probe."""
        if self._degraded:
            return PROBE_S
        if self.retention is None:
            return None
        return max(0.0, self._next_prune - time.monotonic()) + 0.01

    def _run(self) -> None:
        self._resume()
        try:
            while (item := self._next_batch()) is not None:
                batch, last = item
                self.write_raws(list(chain.from_iterable(
                    unpack_raws(data) if packed else part
                    for packed, data, part in segments(batch))))
                self._acknowledge(last)
                self._maybe_prune()
        finally:
            self._finish()

    def tick(self) -> None:
        """Periodic work of an idle writer: probe the store while degraded, prune."""
        self._probe()
        self._maybe_prune()

    # -- lineage: a stable writer whose chain goes on across runs (see `lineage`) ---------

    def _resume(self) -> None:
        """Take a writer slot and continue its chain from the latest of the store's head,
        the slot's state file and its spool; write out what the spool still holds."""
        if self._slot is not None:
            return
        self._slot = slot = Slot(store_dir(self.engine.url))
        self.writer_id = slot.writer
        self._spool = Spool(slot.spool_path)
        spooled = self._spool.batches()
        known = slot.last()
        stored: list[tuple[int, bytes]] = []
        try:
            with self.engine.connect() as conn:
                head = conn.execute(select(heads.c.seq, heads.c.mac).where(
                    heads.c.writer == self.writer_id)).first()
                top = conn.execute(select(batches.c.seq, batches.c.mac).where(
                    batches.c.writer == self.writer_id).order_by(batches.c.seq.desc())
                    .limit(1)).first()
            stored = [(int(r.seq), bytes(r.mac)) for r in (head, top) if r is not None]
        except Exception as exc:     # the store cannot be read: spool until it can
            self._enter_degraded(exc)
        places = [*stored, *([known] if known else []),
                  *([(spooled[-1][0], spooled[-1][2])] if spooled else [])]
        if places:
            seq, mac = max(places, key=lambda p: p[0])
            self._seq, self._prev_mac = seq + 1, mac
        if known and stored and known[0] > max(p[0] for p in stored) and not (
                spooled and spooled[-1][0] >= known[0]):
            log.error("audit: writer %s made batch %d durable but the store's chain ends at "
                      "batch %d: newer batches were removed from the store (logs verify "
                      "will show the gap)", self.writer_id, known[0],
                      max(p[0] for p in stored))
        if spooled and not self._degraded:
            self._degraded = True
            metrics.AUDIT_DEGRADED.set(1)
            self._probe(force=True)
            if self._degraded:
                log.error("audit: %d batches spooled by an earlier run wait for the store "
                          "(unreachable); new records are spooled too", len(spooled))

    def _finish(self) -> None:
        if self._degraded:
            self._probe(force=True)
        if self._degraded and self._spool is not None:
            log.warning("audit: store still unreachable at shutdown; %d batches stay in "
                        "%s and are written by the next start", len(self._spool.batches()),
                        self._spool.path)
        if self._spool is not None:
            self._spool.close()
        if self._slot is not None:
            self._slot.release()

    # -- degraded mode: the local spool ----------------------------------------------------

    def _enter_degraded(self, exc: BaseException) -> None:
        if not self._degraded:
            self._degraded = True
            metrics.AUDIT_DEGRADED.set(1)
            self._next_probe = time.monotonic() + PROBE_S
            log.error("audit: store unreachable (%s); records go to the local spool %s "
                      "until it is back", _short(exc),
                      self._spool.path if self._spool is not None else "?")

    def _to_spool(self, batch: Batch) -> None:
        assert self._spool is not None
        delay = 0.05
        while True:
            try:
                self._spool.append(batch)
                metrics.AUDIT_EVENTS.labels("spooled").inc(len(batch[3]))
                return
            except OSError as exc:     # the spool's disk failed too: wait for either
                log.error("audit: cannot write the spool (%s); retrying in %.2f s",
                          exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _probe(self, force: bool = False) -> None:
        """While degraded: try the store, write the spool out in order, leave degraded."""
        if not self._degraded or self._spool is None or (
                not force and time.monotonic() < self._next_probe):
            return
        self._next_probe = time.monotonic() + PROBE_S
        if not self._migrated:
            try:
                migrate(self.engine)
            except Exception:
                return                      # still down (or not yet migratable): wait
            self._migrated = True
        spooled = self._spool.batches()
        redo: list[Raw] = []
        for batch in spooled:
            try:
                self._insert(batch)
            except Exception as exc:
                if unavailable(exc):
                    return                  # still down: stay degraded, quietly
                # (what is spooled is storable, so this should not happen)
                log.error("audit: the store refused spooled batch %d (%s); writing its "
                          "records again as new batches", batch[0], _short(exc))
                redo += self._reopen(batch)
        self._spool.clear()
        self._degraded = False
        metrics.AUDIT_DEGRADED.set(0)
        events_n = sum(len(b[3]) for b in spooled)
        log.warning("audit: store reachable again; %d spooled events written", events_n)
        if redo:
            self.write_raws(redo)

    def _open(self, header: bytes | None, clear: Raw, payload: bytes) -> tuple[Any, ...]:
        """The sealed fields of a record this writer sealed (blank if they do not open)."""
        try:
            return tuple(self.reader.open(header, payload, marshal.dumps(tuple(clear), 2))
                         .values())
        except Exception:
            return ("",) * _NSECRET

    def _reopen(self, batch: Batch) -> list[Raw]:
        header = batch[5] if len(batch) > 5 else None
        return [(*clear, *self._open(header, clear, payload))
                for clear, payload in zip(batch[3], batch[4], strict=True)]

    def _storable(self, clears: list[Raw], payloads: list[bytes], header: bytes | None
                  ) -> tuple[list[Raw], list[bytes]]:
        """The batch with every record any store takes (for the spool); a record in its
        safe form is sealed under the batch's own data key (one header per batch)."""
        if all(map(storable, clears)):
            return clears, payloads
        fixed_c: list[Raw] = []
        fixed_p: list[bytes] = []
        for clear, payload in zip(clears, payloads, strict=True):
            if not storable(clear):
                secret = self._open(header, clear, payload)
                safe_clear, safe_secret = safe_form(clear, secret, "not storable")
                resealed = self._seal_when_running([(*safe_clear, *safe_secret)], header,
                                                   reuse=True)
                if resealed is None or not resealed[0]:
                    continue  # stopping while suspended (counted), or unrecordable
                clear, payload = resealed[0][0], resealed[1][0]
            fixed_c.append(clear)
            fixed_p.append(payload)
        return fixed_c, fixed_p

    def write_raws(self, raws: list[Raw]) -> None:
        """Seal and write one batch. A database that is unreachable is retried with
        backoff; a batch the database refuses is split until the refused record is
        alone, which is then stored in its safe form (or dropped, logged): one bad
        record never blocks the others and nothing is retried forever. While the
        customer-managed key is unavailable (suspended) the batch waits, unsealed and
        unacknowledged, until it returns (nothing is written in clear)."""
        sealed = self._seal_when_running(raws)
        if sealed is not None and sealed[0]:
            self._store(*sealed)

    def _seal_when_running(self, raws: list[Raw], header: bytes | None = None,
                           reuse: bool = False
                           ) -> tuple[list[Raw], list[bytes], bytes | None] | None:
        """`_seal`, waiting while the customer-managed key is unavailable; None when the
        log stops meanwhile (the records are counted as dropped)."""
        from egressguard.keys.envelope import SuspendedError

        while True:
            try:
                sealed = self._seal(raws, header, reuse)
            except SuspendedError as exc:
                if not self._suspended_since:
                    self._suspended_since = time.monotonic()
                    log.error("audit: %d records wait for the customer-managed key (%s)",
                              len(raws), exc)
                if self._stopping:
                    log.error("audit: stopping while suspended: %d records not written",
                              len(raws))
                    metrics.AUDIT_EVENTS.labels("dropped").inc(len(raws))
                    return None
                time.sleep(0.2)
                continue
            if self._suspended_since:
                log.warning("audit: customer-managed key available again after %.1f s",
                            time.monotonic() - self._suspended_since)
                self._suspended_since = 0.0
            return sealed

    def _store(self, clears: list[Raw], payloads: list[bytes], header: bytes | None) -> None:
        try:
            self._write_available(clears, payloads, header)
            metrics.AUDIT_EVENTS.labels("written").inc(len(clears))
            return
        except _Refused as refused:
            if len(clears) > 1:
                half = len(clears) // 2
                self._store(clears[:half], payloads[:half], header)
                self._store(clears[half:], payloads[half:], header)
                return
            why = refused.why
        self._store_safe_form(clears[0], payloads[0], header, why)

    def _store_safe_form(self, clear: Raw, payload: bytes, header: bytes | None,
                         why: str) -> None:
        secret = self._open(header, clear, payload)
        safe_clear, safe_secret = safe_form(clear, secret, why)
        log.error("audit: the database refused a record (%s); storing it in safe form "
                  "(host %r)", why, safe_clear[_HOST][:80])
        resealed = self._seal_when_running([(*safe_clear, *safe_secret)], header,
                                           reuse=True)
        if resealed is None:
            return
        clears, payloads, header = resealed
        try:
            if clears:
                self._write_available(clears, payloads, header)
                metrics.AUDIT_EVENTS.labels("written").inc()
                return
        except _Refused as again:
            why = again.why
        _invalid((clear, why))

    def _write_available(self, clears: list[Raw], payloads: list[bytes],
                         header: bytes | None) -> None:
        """Make one batch durable: in the store, or in the spool while the store is
        unreachable; `_Refused` when the store answers that it will not store it."""
        if self._slot is None:
            self._resume()
        while True:
            if self._degraded:
                self._probe()
            if self._degraded:
                clears, payloads = self._storable(clears, payloads, header)
                batch = self._link(clears, payloads, header)
                self._to_spool(batch)
                self._advance(batch)
                return
            batch = self._link(clears, payloads, header)
            try:
                started = time.perf_counter()
                self._insert(batch)
                metrics.AUDIT_COMMIT_SECONDS.observe(time.perf_counter() - started)
                self._advance(batch)
                return
            except _Collision:
                self._resync()
            except Exception as exc:
                if not unavailable(exc):   # the database refused this batch's data
                    raise _Refused(_short(exc)) from exc
                metrics.AUDIT_EVENTS.labels("failed").inc(len(clears))
                self._enter_degraded(exc)

    def _seal(self, raws: list[Raw], header: bytes | None = None, reuse: bool = False
              ) -> tuple[list[Raw], list[bytes], bytes | None]:
        """(clear values, payload, batch header) of every recordable event; a malformed
        one is dropped (logged and counted) so that it can never wedge the writer in its
        retry loop. Every field is bounded here (`bounds`), before it reaches the store.
        With a customer-managed key the batch gets a data key (its wrapped form is the
        header; `SuspendedError` while the key is unavailable), or with `reuse` the one of
        `header` (a record re-sealed into its batch).
        The per-record loop is kept flat: it is most of the writer's CPU."""
        clears: list[Raw] = []
        payloads: list[bytes] = []
        nonces = os.urandom(NONCE * len(raws))
        batch_header: bytes | None = None
        if self.envelope is None or (reuse and header is None):
            encrypt = self.sealer.encrypt
        elif reuse and header is not None:
            batch_header, encrypt = header, self.envelope.reader_key(header).encrypt
        else:
            batch_header, encrypt = self.reader.batch(len(raws))
        dumps = marshal.dumps
        types, types_no_port = _CAST, _CAST_NO_PORT
        few, fits = _FEW, self._fitting
        n = _NCLEAR
        at = 0
        for raw in raws:
            if (t := tuple(map(type, raw))) != types and t != types_no_port:
                try:
                    raw = canonical(raw)
                except (TypeError, ValueError, UnicodeError):
                    _invalid(raw)
                    continue
            clear = raw[:n]
            # Bounds, cheaply: the three columns whose values vary per request by length,
            # the port by range, and the other columns (a handful of combinations: rule,
            # layer, cluster, ...) once per distinct combination.
            if (len(clear[_HOST]) > _HOST_W or len(clear[_ADDR]) > _ADDR_W
                    or len(clear[_CONN]) > _CONN_W
                    or ((port := clear[_PORT]) is not None and not 0 <= port <= 65535)
                    or ((key := few(clear)) not in fits and not self._fits(key, clear))):
                clear = bound_clear(clear)
            joined = "\0".join(raw[n:])
            if len(joined) > SECRET_WIDTH:
                joined = "\0".join(bound_secret(raw[n:]))
            try:
                if joined.count("\0") == _NSECRET - 1:   # no field holds a NUL: fast form
                    plain = b"0" + joined.encode("utf-8", "surrogatepass")
                else:
                    plain = b"1" + json.dumps(list(bound_secret(raw[n:]))).encode()
            except UnicodeError:
                _invalid(raw)
                continue
            nonce = nonces[at:at + NONCE]
            at += NONCE
            # AES-GCM over the sealed fields, the clear columns as associated data
            # (`crypto.associated`: marshal format 2).
            payloads.append(nonce + encrypt(nonce, plain, dumps(clear, 2)))
            clears.append(clear)
        return clears, payloads, batch_header

    def _fits(self, key: tuple[Any, ...], clear: Raw) -> bool:
        """Whether every string column of `clear` fits; remembers a fitting combination
        of the low-cardinality columns (`key`), so the next records skip this."""
        if not all(map(ge, STRING_WIDTHS, map(len, _STRINGS(clear)))):
            return False
        if len(self._fitting) >= 4096:
            self._fitting.clear()
        self._fitting.add(key)
        return True

    def _insert_sql(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            one = f"({', '.join([self._mark] * len(_COLUMNS))})"
            sql = self._sql[rows] = (f"INSERT INTO {events.name} ({', '.join(_COLUMNS)}) "
                                     f"VALUES {', '.join([one] * rows)}")
        return sql

    def _link(self, clears: list[Raw], payloads: list[bytes], header: bytes | None
              ) -> Batch:
        """The batch as the next link of this writer's chain (not yet durable)."""
        mac = self.reader.chain(header, self._prev_mac, self.writer_id, self._seq,
                                payloads)
        return (self._seq, self._prev_mac, mac, clears, payloads, header)

    def _advance(self, batch: Batch) -> None:
        self._seq, self._prev_mac = batch[0] + 1, batch[2]
        if self._slot is not None:
            self._slot.remember(batch[0], batch[2])

    def _insert(self, batch: Batch) -> None:
        """Commit one batch, its events and the writer's head in one transaction;
        a batch already present with the same MAC (a lost reply, a spool drained twice)
        counts as written."""
        seq, prev_mac, mac, clears, payloads = batch[:5]
        header = batch[5] if len(batch) > 5 else None
        head = {"writer": self.writer_id, "seq": seq, "count": len(clears),
                "first_time": min(c[0] for c in clears),
                # (an "exchange" record carries its decision's time: not in queue order)
                "last_time": max(c[0] for c in clears),
                "prev_mac": prev_mac, "mac": mac, "key_header": header}
        try:
            with self.engine.begin() as conn:
                key = conn.execute(batches.insert().values(head)).inserted_primary_key
                batch_id = key[0] if key is not None else None
                rows = [(*clear, payload, batch_id)
                        for clear, payload in zip(clears, payloads, strict=True)]
                # Multi-row INSERTs of a few fixed sizes (cached statements): one driver
                # call per 128 rows, and the GIL released once per call, not per row.
                at, left = 0, len(rows)
                size = _CHUNK
                while left:
                    while size > left:
                        size //= 2
                    for _ in range(left // size):
                        conn.exec_driver_sql(self._insert_sql(size), tuple(
                            chain.from_iterable(rows[at:at + size])))
                        at += size
                    left = len(rows) - at
                conn.exec_driver_sql(self._head_sql(), (
                    self.writer_id, seq, mac, time.time(),
                    self.reader.mark(header, "head", self.writer_id, seq, mac), header))
        except IntegrityError:
            found = self._stored_mac(seq)
            if found is None:
                raise
            if found != mac:
                raise _Collision() from None

    def _head_sql(self) -> str:
        m = self._mark
        return (f"INSERT INTO {heads.name} (writer, seq, mac, time, head_mac, key_header) "
                f"VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (writer) DO UPDATE SET "
                "seq = excluded.seq, mac = excluded.mac, time = excluded.time, "
                "head_mac = excluded.head_mac, key_header = excluded.key_header "
                f"WHERE {heads.name}.seq < excluded.seq")

    def _stored_mac(self, seq: int) -> bytes | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(batches.c.mac).where(
                batches.c.writer == self.writer_id, batches.c.seq == seq)).scalar()
        return None if found is None else bytes(found)

    def _resync(self) -> None:
        """Another batch already holds our next seq (a second process with this writer
        id, or a restored backup): go on after the store's newest one, and say so."""
        with self.engine.connect() as conn:
            row = conn.execute(select(batches.c.seq, batches.c.mac).where(
                batches.c.writer == self.writer_id).order_by(batches.c.seq.desc())
                .limit(1)).first()
        if row is not None:
            log.error("audit: writer %s batch %d is already in the store with another MAC; "
                      "continuing after batch %d", self.writer_id, self._seq, row.seq)
            self._seq, self._prev_mac = int(row.seq) + 1, bytes(row.mac)

    def _acknowledge(self, seq: int) -> None:
        with self._wait_lock:
            self._acked = seq
            ready = [cb for target, cb in self._waiters if target <= seq]
            self._waiters = [(t, cb) for t, cb in self._waiters if t > seq]
        metrics.AUDIT_PENDING.set(self._last_seq - seq)
        for callback in ready:
            callback()

    def _maybe_prune(self) -> None:
        if self.retention is None or self._degraded or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.retention.every_s
        from egressguard.audit.query import prune
        try:
            removed = prune(self.engine, self.reader, max_age_s=self.retention.max_age_s,
                            max_rows=self.retention.max_rows)
        except Exception:
            log.exception("audit pruning failed (will retry)")
            return
        if removed:
            log.info("audit retention removed %d events", removed)


class _Collision(Exception):
    """The store already holds a different batch at this writer's next seq."""


class _Refused(Exception):
    """The database answered that it will not store this batch (not a lost connection)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def unavailable(exc: BaseException) -> bool:
    """Whether a write failed because the store is not usable now (spool, probe again)
    rather than because it refused the data sent (split the batch): only a data or
    integrity error from the database, or a value the driver cannot send, is a refusal;
    a lost connection, a missing table or a permission problem is not the record's fault."""
    if isinstance(exc, DisconnectionError | SATimeoutError):
        return True
    return isinstance(exc, DBAPIError) and not isinstance(exc, DataError | IntegrityError)


def _short(exc: BaseException) -> str:
    """One line naming an error: its class and first line, for a log line (no traceback)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first[:200]}"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
