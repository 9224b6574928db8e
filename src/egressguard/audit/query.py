"""Reading the audit log: filters and paging (CLI and API share them), retention, verify.

Outcomes: `allow` (policy allowed), `deny` (policy denied and the call was refused) and
`would-deny` (policy denied in report-only mode; the call went through). `--verdict deny`
therefore lists enforced refusals only; `would-deny` is what a report-only policy would
have refused once enforced.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, and_, delete, func, select, update

from egressguard.audit.crypto import (
    CLEAR_FIELDS,
    SECRET_FIELDS,
    EnvelopeSealer,
    Sealer,
    associated,
    reader_of,
    unavailable_as_cannot_decrypt,
)
from egressguard.audit.db import snapshot_options
from egressguard.audit.lineage import GENESIS, LEGACY_WRITER
from egressguard.audit.schema import batches, events, heads, prunes
from egressguard.errors import InputError

OUTCOMES = ("allow", "deny", "would-deny")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class QueryError(InputError, ValueError):
    """A filter the log cannot apply (bad duration, outcome, ...)."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `7d`, `2w`, or combinations like `1h30m` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise QueryError(f"invalid duration {text!r}: expected e.g. 90s, 15m, 1h, 7d, 2w")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(compact))


def parse_since(text: str, now: float | None = None) -> float:
    """A duration ago (`1h`) or an ISO 8601 time (`2024-05-01T10:00:00Z`) -> UNIX time."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except QueryError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"invalid time {text!r}: expected a duration (1h, 7d) or an "
                         "ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Filter:
    """Which records to read; every field optional. `dest` is a glob (`*.example.com`)."""

    since: float | None = None
    until: float | None = None
    outcome: str | None = None
    dest: str | None = None
    cluster: str | None = None
    kind: str | None = None
    layer: str | None = None
    phase: str | None = None
    connection_id: str | None = None
    identity: str | None = None
    """The workload identity: a sealed field, so matched after opening each record
    (`query` reads on until it has `limit` matches); "" selects anonymous callers."""

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise QueryError(f"invalid verdict {self.outcome!r}: expected one of "
                             + ", ".join(OUTCOMES))

    def where(self) -> list[ColumnElement[bool]]:
        c = events.c
        clauses: list[ColumnElement[bool]] = []
        if self.since is not None:
            clauses.append(c.time >= self.since)
        if self.until is not None:
            clauses.append(c.time < self.until)
        if self.outcome == "allow":
            clauses.append(c.verdict == "allow")
        elif self.outcome == "deny":
            clauses.append(and_(c.verdict == "deny", c.permitted.is_(False)))
        elif self.outcome == "would-deny":
            clauses.append(and_(c.verdict == "deny", c.permitted.is_(True)))
        if self.dest:
            clauses.append(host_clause(self.dest))
        if self.phase in ("decision", "close"):
            # A short exchange's one record is both its decision and its close.
            clauses.append(c.phase.in_((self.phase, "exchange")))
        elif self.phase is not None:
            clauses.append(c.phase == self.phase)
        for column, value in ((c.cluster, self.cluster), (c.kind, self.kind),
                              (c.layer, self.layer),
                              (c.connection_id, self.connection_id)):
            if value is not None:
                clauses.append(column == value)
        return clauses


def host_clause(pattern: str) -> ColumnElement[bool]:
    """A glob on the (normalised, lower-case) host: `*` any run, `?` one character."""
    text = pattern.strip().lower().rstrip(".")
    if "*" not in text and "?" not in text:
        return events.c.host == text
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return events.c.host.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def outcome_of(verdict: str, permitted: bool) -> str:
    if verdict == "deny":
        return "would-deny" if permitted else "deny"
    return "allow"


def clear_of(row: Any) -> tuple[Any, ...]:
    """A stored row's clear columns with the types the writer authenticated."""
    return (float(row.time), row.cluster, row.phase, row.kind, row.host,
            None if row.port is None else int(row.port), row.resolved_address, row.protocol,
            row.callout_type, row.verdict, bool(row.permitted), row.layer, row.rule,
            row.policy_version, row.connection_id, int(row.bytes_up), int(row.bytes_down),
            float(row.duration_s), row.close_cause)


Reader = Sealer | EnvelopeSealer
_T = TypeVar("_T")


def event_rows() -> Any:
    """`SELECT` of audit events with their batch's key header (what `to_record` opens);
    every reader of events starts from this."""
    return select(events, batches.c.key_header).select_from(
        events.outerjoin(batches, events.c.batch_id == batches.c.id))


def to_record(row: Any, sealer: Reader | None) -> dict[str, Any]:
    """One stored row (from `event_rows`) as a plain dict, sealed fields opened, or
    marked `<tampered>` (altered) or `<cannot decrypt>` (its key version is unavailable
    here: not evidence of tampering)."""
    values = clear_of(row)
    clear = dict(zip(CLEAR_FIELDS, values, strict=True))
    record: dict[str, Any] = {"id": row.id, **clear,
                              "outcome": outcome_of(clear["verdict"], clear["permitted"])}
    reader = reader_of(sealer)
    header = getattr(row, "key_header", None)
    if reader is None:
        record.update(dict.fromkeys(SECRET_FIELDS, "<encrypted>"))
        return record
    verdict = _open(reader, None if header is None else bytes(header), row.payload,
                    associated(values))
    if isinstance(verdict, dict):
        record.update(verdict)
    else:
        record.update(dict.fromkeys(SECRET_FIELDS, f"<{verdict.split(':')[0]}>"))
        if verdict != "tampered":
            record["unreadable"] = verdict
    return record


def _attempt(header: bytes | None, call: Callable[[], _T]) -> _T | str:
    """`call()`, or the verdict that says why it could not be done: `tampered` (the data
    or the header itself was altered) or `cannot decrypt: key K version V unavailable
    (why)` (the reader's key access; never evidence of tampering)."""
    from egressguard.errors import Unavailable
    from egressguard.keys.envelope import CannotDecrypt, Tampered

    try:
        return call()
    except Tampered:
        return "tampered"
    except CannotDecrypt as exc:
        return str(exc)
    except Unavailable as exc:
        return str(unavailable_as_cannot_decrypt(header, exc))


def _open(reader: EnvelopeSealer, header: bytes | None, payload: bytes,
          clear: bytes) -> dict[str, Any] | str:
    """The sealed fields, or why not (`_attempt`)."""
    return _attempt(header, lambda: reader.open(header, payload, clear))


def query(engine: Engine, flt: Filter, *, sealer: Reader | None, limit: int = 100,
          after: int | None = None, before: int | None = None,
          newest_first: bool = True) -> list[dict[str, Any]]:
    """Records matching `flt`, keyset-paged by id (`after` / `before` are exclusive)."""
    limit = max(1, min(limit, 10_000))
    reader = reader_of(sealer)
    found: list[dict[str, Any]] = []
    while True:  # the identity is sealed: matched after opening, paging on until `limit`
        clauses = flt.where()
        if after is not None:
            clauses.append(events.c.id > after)
        if before is not None:
            clauses.append(events.c.id < before)
        order = events.c.id.desc() if newest_first else events.c.id.asc()
        stmt = event_rows().where(*clauses).order_by(order).limit(limit)
        with engine.connect() as conn:
            page = [to_record(row, reader) for row in conn.execute(stmt)]
        found += page if flt.identity is None else [
            r for r in page if r.get("client_identity") == flt.identity]
        if flt.identity is None or len(found) >= limit or len(page) < limit:
            return found[:limit]
        if newest_first:
            before = page[-1]["id"]
        else:
            after = page[-1]["id"]


def scan(engine: Engine, flt: Filter, *, sealer: Reader | None,
         page: int = 5000) -> Iterator[dict[str, Any]]:
    """Every matching record, oldest first (for the recommender and exports)."""
    after: int | None = None
    while True:
        rows = query(engine, flt, sealer=sealer, limit=page, after=after, newest_first=False)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1]["id"]


def prune(engine: Engine, sealer: Reader, *, max_age_s: float | None = None,
          max_rows: int | None = None, now: float | None = None) -> int:
    """Delete whole batches older than `max_age_s` and/or beyond the newest `max_rows`
    events; returns the number of events removed. What is removed is, per writer, the
    oldest batches of its chain, and a MACed prune record says through which batch (and
    that batch's MAC), so `verify` still links the chain and tells pruning from deletion."""
    now = time.time() if now is None else now
    reader = reader_of(sealer)
    assert reader is not None
    cut: int | None = None  # remove batches with id <= cut
    with engine.begin() as conn:
        if max_age_s is not None:
            old = conn.execute(select(func.max(batches.c.id)).where(
                batches.c.last_time < now - max_age_s)).scalar()
            cut = old if old is not None else cut
        if max_rows is not None:
            total = conn.execute(select(func.count()).select_from(events)).scalar() or 0
            if total > max_rows:
                # The newest event beyond the limit; its batch (if partly kept) stays.
                row = conn.execute(select(events.c.id, events.c.batch_id).order_by(
                    events.c.id.desc()).offset(max_rows).limit(1)).first()
                if row is not None:
                    newer = conn.execute(select(func.min(events.c.batch_id)).where(
                        events.c.id > row.id)).scalar()
                    limit_cut = row.batch_id if newer is None or newer > row.batch_id \
                        else row.batch_id - 1
                    cut = limit_cut if cut is None else max(cut, limit_cut)
        if cut is None:
            return 0
        removed = 0
        tops = conn.execute(select(batches.c.writer, func.max(batches.c.seq)).where(
            batches.c.id <= cut).group_by(batches.c.writer)).all()
        for writer, through in tops:
            through = int(through)
            mac = bytes(conn.execute(select(batches.c.mac).where(
                batches.c.writer == writer, batches.c.seq == through)).scalar_one())
            ids = select(batches.c.id).where(batches.c.writer == writer,
                                             batches.c.seq <= through)
            count = conn.execute(delete(events).where(events.c.batch_id.in_(ids))).rowcount
            conn.execute(delete(batches).where(batches.c.writer == writer,
                                               batches.c.seq <= through))
            removed += int(count or 0)
            before = conn.execute(select(prunes.c.events).where(
                prunes.c.writer == writer)).scalar()
            total_events = int(before or 0) + int(count or 0)
            header = reader.current_header()
            values = {"through_seq": through, "through_mac": mac, "events": total_events,
                      "time": now, "key_header": header,
                      "prune_mac": prune_mac(reader, header, writer, through, mac,
                                             total_events)}
            if before is None:
                conn.execute(prunes.insert().values(writer=writer, **values))
            else:
                conn.execute(update(prunes).where(prunes.c.writer == writer).values(values))
    return removed


def prune_mac(reader: EnvelopeSealer, header: bytes | None, writer: str, through: int,
              mac: bytes, count: int) -> bytes:
    return reader.mark(header, "prune", writer, through, mac, count)


@dataclass
class Verification:
    batches: int = 0
    events: int = 0
    problems: list[str] | None = None
    notes: list[str] | None = None
    # What could not be checked because its key version is unavailable here: never
    # evidence of tampering, and never called intact either.
    unreadable: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        """Everything was checked (nothing `unreadable`)."""
        return not self.unreadable


@dataclass
class _Writer:
    first: tuple[int, bytes] | None = None     # (seq, prev_mac) of its oldest batch
    last: tuple[int, bytes] | None = None      # (seq, mac) of its newest batch


def verify(engine: Engine, sealer: Reader) -> Verification:
    """Check every record opens (nothing edited), every writer's batch chain links (no
    batch or record removed or added in the middle), its newest batch is its head (the
    newest batches were not removed) and its oldest follows its prune record or the
    genesis (the oldest were removed only by retention). See `lineage` for the limits.

    A batch whose data key does not unwrap here (its key version disabled, deleted, not
    granted to this reader, or no customer-managed key configured) is `unreadable`,
    naming the key version: it is not reported as tampered (nor as intact)."""
    reader = reader_of(sealer)
    assert reader is not None
    result = Verification(problems=[], notes=[], unreadable=[])
    problems = result.problems
    assert problems is not None and result.notes is not None
    chains: dict[str, _Writer] = {}
    locked: dict[str, list[int]] = {}   # "cannot decrypt: key ..." -> batch ids
    # One snapshot: batches committed while verifying are neither half-seen nor orphans.
    with engine.connect().execution_options(**snapshot_options(engine)) as conn, \
            conn.begin():
        for head in conn.execute(select(batches).order_by(batches.c.writer, batches.c.seq)):
            rows = conn.execute(select(events).where(events.c.batch_id == head.id)
                                .order_by(events.c.id)).all()
            result.batches += 1
            result.events += len(rows)
            header = None if head.key_header is None else bytes(head.key_header)
            payloads = [row.payload for row in rows]
            verdicts = [_open(reader, header, row.payload, associated(clear_of(row)))
                        for row in rows]
            altered = [row.id for row, v in zip(rows, verdicts, strict=True)
                       if v == "tampered"]
            cannot = next((v for v in verdicts if isinstance(v, str) and v != "tampered"),
                          None)
            if altered:
                shown = ", ".join(map(str, altered[:5])) + (", ..." if len(altered) > 5 else "")
                problems.append(f"{len(altered)} event{'s' if len(altered) > 1 else ''} "
                                f"altered (do not authenticate): {shown}")
            chain = chains.setdefault(head.writer, _Writer())
            prev = chain.last
            if prev is None:
                chain.first = (head.seq, bytes(head.prev_mac))
            elif head.seq != prev[0] + 1:
                problems.append(f"writer {head.writer}: batches {prev[0] + 1}.."
                                f"{head.seq - 1} missing")
            elif head.prev_mac != prev[1]:
                problems.append(f"writer {head.writer} batch {head.seq}: chain broken")
            mac = _mac(reader, header, head, payloads)
            if isinstance(mac, str):
                cannot = cannot or mac
            if cannot is not None:
                locked.setdefault(cannot, []).append(head.id)
            elif len(rows) != head.count or mac != head.mac:
                problems.append(f"writer {head.writer} batch {head.seq} (id {head.id}): "
                                f"records added, removed or altered ({len(rows)} of "
                                f"{head.count} present)")
            chain.last = (head.seq, bytes(head.mac))
        tops = {r.writer: r for r in conn.execute(select(heads))}
        pruned = {r.writer: r for r in conn.execute(select(prunes))}
        orphans = conn.execute(select(func.count()).select_from(events).where(
            events.c.batch_id.not_in(select(batches.c.id)))).scalar() or 0
    for writer in sorted(set(chains) | set(tops) | set(pruned)):
        _check_ends(writer, chains.get(writer, _Writer()), tops.get(writer),
                    pruned.get(writer), reader, result)
    if orphans:
        problems.append(f"{orphans} events belong to no batch (inserted)")
    assert result.unreadable is not None
    for why, ids in locked.items():
        shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
        result.unreadable.insert(0, f"{why}: {len(ids)} batch{'es' if len(ids) > 1 else ''}"
                                    f" not checked (ids {shown})")
    return result


def _mac(reader: EnvelopeSealer, header: bytes | None, head: Any,
         payloads: list[bytes]) -> bytes | str:
    """A batch's chain MAC recomputed, or why it cannot be (`_attempt`; an altered header
    gives an empty MAC, which never matches)."""
    mac = _attempt(header, lambda: reader.chain(header, bytes(head.prev_mac), head.writer,
                                                head.seq, payloads))
    return b"" if mac == "tampered" else mac


def _marked(reader: EnvelopeSealer, row: Any, stored: bytes, label: str,
            *parts: bytes | str | int) -> bool | str:
    """Whether a head or prune record's MAC holds; or why it cannot be checked."""
    header = None if row.key_header is None else bytes(row.key_header)
    held = _attempt(header, lambda: reader.mark(header, label, *parts) == stored)
    return False if held == "tampered" else held


def _check_ends(writer: str, chain: _Writer, head: Any, pruned: Any, reader: EnvelopeSealer,
                result: Verification) -> None:
    """The two ends of one writer's chain: its head record and its prune record."""
    problems, notes, unreadable = result.problems, result.notes, result.unreadable
    assert problems is not None and notes is not None and unreadable is not None
    legacy = LEGACY_WRITER.fullmatch(writer) is not None and head is None
    # The oldest end: the genesis, or just after what retention recorded pruning.
    start_seq, start_mac = 0, GENESIS
    if pruned is not None:
        held = _marked(reader, pruned, bytes(pruned.prune_mac), "prune", writer,
                       int(pruned.through_seq), bytes(pruned.through_mac),
                       int(pruned.events))
        if isinstance(held, str):
            unreadable.append(f"{held}: writer {writer}: prune record not checked")
        elif not held:
            problems.append(f"writer {writer}: prune record altered")
        start_seq, start_mac = int(pruned.through_seq) + 1, bytes(pruned.through_mac)
    if chain.first is not None and not legacy and chain.first != (start_seq, start_mac):
        if chain.first[0] > start_seq:
            problems.append(f"writer {writer}: oldest batches {start_seq}.."
                            f"{chain.first[0] - 1} missing (not pruned by retention)")
        else:
            problems.append(f"writer {writer} batch {chain.first[0]}: chain broken at its "
                            "start")
    # The newest end: the head record.
    if legacy:
        notes.append(f"writer {writer}: from before chain anchoring (no head record): "
                     "its newest and oldest batches are not protected")
        return
    if head is None:
        problems.append(f"writer {writer}: head record missing (its newest batches may "
                        "have been removed)")
        return
    seq, mac = int(head.seq), bytes(head.mac)
    held = _marked(reader, head, bytes(head.head_mac), "head", writer, seq, mac)
    if isinstance(held, str):
        unreadable.append(f"{held}: writer {writer}: head record not checked")
    elif not held:
        problems.append(f"writer {writer}: head record altered")
        return
    newest = chain.last[0] if chain.last is not None else start_seq - 1
    if newest < seq:
        problems.append(f"writer {writer}: newest batches {newest + 1}..{seq} missing "
                        "(the head says the chain reaches there)")
    elif newest > seq or (chain.last is not None and chain.last[1] != mac):
        problems.append(f"writer {writer}: head record does not match the newest batch "
                        f"{newest}")
