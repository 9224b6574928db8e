"""The audit tables (SQLAlchemy Core), in the store's database beside the control plane's.

`audit_events` holds one row per event: the filterable fields in clear, the sensitive
ones sealed in `payload` (see `crypto`). `audit_batches` holds one row per committed batch
with the HMAC chain that makes a removed, added or edited record detectable.
`audit_heads` holds each writer's newest batch (seq and MAC, itself MACed), updated in the
batch's own transaction; `audit_prunes` what retention removed from each writer's chain
(through which seq, that batch's MAC, how many events), MACed (see `lineage`).
Batches sealed under a customer-managed key carry `key_header` (the wrapped data key,
naming key and version); heads and prunes the header whose data key MACs them.
`audit_system` holds key state changes in clear (`audit.system`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: INTEGER PRIMARY KEY = rowid

batches = Table(
    "audit_batches", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("writer", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("first_time", Float, nullable=False),
    Column("last_time", Float, nullable=False),
    Column("prev_mac", LargeBinary, nullable=False),
    Column("mac", LargeBinary, nullable=False),
    Column("key_header", LargeBinary),  # the wrapped data key (None: the local audit key)
    Index("ix_audit_batches_writer_seq", "writer", "seq", unique=True),
)

events = Table(
    "audit_events", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("batch_id", BigInteger, nullable=False),
    Column("time", Float, nullable=False),
    Column("cluster", String(64), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("host", String(260), nullable=False),
    Column("port", Integer),
    Column("resolved_address", String(64), nullable=False),
    Column("protocol", String(8), nullable=False),
    Column("callout_type", String(32), nullable=False),
    Column("verdict", String(8), nullable=False),
    Column("permitted", Boolean, nullable=False),
    Column("layer", String(32), nullable=False),
    Column("rule", String(300), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("connection_id", String(64), nullable=False),
    Column("bytes_up", BigInteger, nullable=False),
    Column("bytes_down", BigInteger, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("close_cause", String(16), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_batch", "batch_id"),
)

heads = Table(
    "audit_heads", metadata,
    Column("writer", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("mac", LargeBinary, nullable=False),
    Column("time", Float, nullable=False),
    Column("head_mac", LargeBinary, nullable=False),
    Column("key_header", LargeBinary),  # whose data key keys `head_mac`
)

prunes = Table(
    "audit_prunes", metadata,
    Column("writer", String(32), primary_key=True),
    Column("through_seq", BigInteger, nullable=False),
    Column("through_mac", LargeBinary, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("time", Float, nullable=False),
    Column("prune_mac", LargeBinary, nullable=False),
    Column("key_header", LargeBinary),  # whose data key keys `prune_mac`
)

# Key state changes (Suspended / Running): in clear, since they must be written exactly
# when no data key can be had.
system = Table(
    "audit_system", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("cluster", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_audit_system_time", "time"),
)
