"""A short string a regular expression matches, to turn a callout entry into a request.

Walks Python's parse of the pattern (RE2 syntax is a subset for what callout entries
use), taking the minimum repeat count, the first branch and, for a character class, a
letter or digit it admits (URLs need those). Returns None for what it does not handle
(back-references, look-arounds): callers then report "unknown", never a wrong example.
Pure and bounded.
"""

from __future__ import annotations

import re
from re import _constants as _c  # type: ignore[attr-defined]  # Python 3.11+
from re import _parser as _p  # type: ignore[attr-defined]
from typing import Any

_MAX = 512
_PREFERRED = "abcdefghijklmnopqrstuvwxyz0123456789./:-_"


class _Unsupported(Exception):
    pass


def _char_in(items: list[tuple[Any, Any]]) -> str:
    negate = any(op == _c.NEGATE for op, _ in items)
    for char in _PREFERRED + "".join(chr(i) for i in range(32, 127)):
        if _class_has(items, char) != negate:
            return char
    raise _Unsupported


def _class_has(items: list[tuple[Any, Any]], char: str) -> bool:
    code = ord(char)
    for op, arg in items:
        if op == _c.LITERAL and arg == code:
            return True
        if op == _c.RANGE and arg[0] <= code <= arg[1]:
            return True
        if op == _c.CATEGORY:
            name = str(arg)
            if ("DIGIT" in name and char.isdigit()) or ("WORD" in name and (
                    char.isalnum() or char == "_")) or ("SPACE" in name and char.isspace()):
                return "NOT" not in name
            if "NOT" in name:
                return True
    return False


def _walk(parsed: Any, out: list[str]) -> None:
    for op, arg in parsed:
        if len(out) > _MAX:
            raise _Unsupported
        if op == _c.LITERAL:
            out.append(chr(arg))
        elif op == _c.NOT_LITERAL:
            out.append("a" if arg != ord("a") else "b")
        elif op == _c.ANY:
            out.append("a")
        elif op == _c.IN:
            out.append(_char_in(arg))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            low, _high, body = arg
            for _ in range(low):
                _walk(body, out)
        elif op == _c.SUBPATTERN:
            _walk(arg[-1], out)
        elif op == _c.BRANCH:
            _walk(arg[1][0], out)
        elif op == _c.AT:
            continue
        elif op == getattr(_c, "ATOMIC_GROUP", None):
            _walk(arg, out)
        else:
            raise _Unsupported


def sample(pattern: str) -> str | None:
    """A string `pattern` is found in, or None when it cannot be produced."""
    try:
        out: list[str] = []
        _walk(_p.parse(pattern), out)
    except (_Unsupported, re.error, RecursionError, ValueError, TypeError):
        return None
    text = "".join(out)
    try:
        return text if re.search(pattern, text) else None
    except re.error:
        return None
