"""Every audit field bounded before it reaches the store, and the safe form of a record
the database refused (pure: no I/O).

Why: one over-long field (a 300-character CONNECT host, a 300-character rule name) used to
make PostgreSQL refuse the whole batch, and the writer retried it forever, so one
unauthenticated request stopped all auditing.

Over-long strings are stored as **a prefix plus a hash**: the first `width - 20`
characters, then `...#` and the first 16 hex digits of the SHA-256 of the whole value
(UTF-8, lone surrogates kept with `surrogatepass`). The marker is visible to anyone reading
the record, the prefix keeps globs on the host useful, and two long values that share a
prefix stay distinct. Sealed fields (client, method, path, reason) are bounded the same
way at `SECRET_WIDTH` characters each.

`safe_form` is the last resort for a record the database still refuses (a NUL byte, a
lone surrogate, an out-of-range number): every string is made plain UTF-8 text without
NULs (backslash escapes), numbers are clamped into their column types, and the reason says
so. A record that cannot be stored even then is dropped, logged and counted: it never
blocks the records after it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from egressguard.audit.crypto import CLEAR_FIELDS, SECRET_FIELDS
from egressguard.audit.schema import events

MARK = "...#"
HASH_DIGITS = 16
SECRET_WIDTH = 4096
INT32 = 2**31 - 1
INT64 = 2**63 - 1

# The width of each clear column (None: not a string column).
WIDTHS: tuple[int | None, ...] = tuple(
    getattr(events.c[name].type, "length", None) for name in CLEAR_FIELDS)
_PORT = CLEAR_FIELDS.index("port")
STRING_AT = tuple(i for i, width in enumerate(WIDTHS) if width is not None)
STRING_WIDTHS: tuple[int, ...] = tuple(w for w in WIDTHS if w is not None)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]


def bounded(value: str, width: int) -> str:
    """`value` if it fits in `width` characters, else its prefix, `...#` and its hash."""
    if len(value) <= width:
        return value
    keep = max(0, width - len(MARK) - HASH_DIGITS)
    return value[:keep] + MARK + digest(value)


def bound_clear(clear: tuple[Any, ...]) -> tuple[Any, ...]:
    """`clear` with every string column within its width and the port a port or None
    (the caller found a field that isn't)."""
    out = list(clear)
    for i, width in zip(STRING_AT, STRING_WIDTHS, strict=True):
        out[i] = bounded(out[i], width)
    if out[_PORT] is not None and not 0 <= out[_PORT] <= 65535:
        out[_PORT] = None
    return tuple(out)


def bound_secret(secret: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(bounded(v, SECRET_WIDTH) for v in secret)


def text(value: str) -> str:
    """Plain UTF-8 text without NUL: lone surrogates and NULs as backslash escapes."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\0", "\\x00")


def storable(clear: tuple[Any, ...]) -> bool:
    """Whether every SQL database takes `clear` as it is (no NUL, valid UTF-8, numbers in
    range); what goes to the spool is made storable first, so draining never meets a
    refusal."""
    for i in STRING_AT:
        value = clear[i]
        if "\0" in value:
            return False
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeError:
                return False
    return all(0 <= clear[i] <= INT64 for i in _INTS)


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


_INTS = {CLEAR_FIELDS.index("bytes_up"), CLEAR_FIELDS.index("bytes_down")}
_FLOATS = {CLEAR_FIELDS.index("time"), CLEAR_FIELDS.index("duration_s")}
_REASON = SECRET_FIELDS.index("reason")


def safe_form(clear: tuple[Any, ...], secret: tuple[str, ...], why: str
              ) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """A record any SQL database stores, as close to the original as that allows."""
    out: list[Any] = list(clear)
    for i, width in enumerate(WIDTHS):
        if width is not None:
            out[i] = bounded(text(out[i]), width)
        elif i == _PORT:
            out[i] = out[i] if out[i] is None or 0 <= out[i] <= 65535 else None
        elif i in _INTS:
            out[i] = _clamp(out[i], 0, INT64)
        elif i in _FLOATS:
            out[i] = _finite(out[i])
    fixed = [bounded(text(v), SECRET_WIDTH) for v in secret]
    fixed[_REASON] = bounded(fixed[_REASON] + f" [stored in safe form: {why}]", SECRET_WIDTH)
    return tuple(out), tuple(fixed)


__all__ = ["INT32", "INT64", "MARK", "SECRET_WIDTH", "STRING_AT", "STRING_WIDTHS", "WIDTHS",
           "bound_clear", "bound_secret", "bounded", "digest", "safe_form", "storable", "text"]
