"""Host-pattern index: exact names in a dict, wildcards by a label-wise suffix walk.

Patterns (spec section 3) are stored under the domain they hang from, so a lookup costs
one dict probe per label of the host, however many patterns the policy holds:

* `a.b.com`    -> `exact["a.b.com"]`
* `*.b.com`    -> `below["b.com"]`     (strict subdomains only)
* `.b.com`     -> `at_or_below["b.com"]` (the name itself and every subdomain)
* `md-*.b.com` -> `globs["b.com"]`     (one leftmost label matching the glob)
* `*`          -> `everything`
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class HostIndex(Generic[T]):
    """Maps canonical host patterns to values; `matches(host)` yields every value that
    applies to a normalised host name."""

    __slots__ = ("at_or_below", "below", "everything", "exact", "globs")

    def __init__(self) -> None:
        self.exact: dict[str, list[T]] = {}
        self.below: dict[str, list[T]] = {}
        self.at_or_below: dict[str, list[T]] = {}
        self.globs: dict[str, list[tuple[re.Pattern[str], T]]] = {}
        self.everything: list[T] = []

    def add(self, pattern: str, value: T) -> None:
        """Add a pattern already canonicalised by `policy.model.validate_host_pattern`."""
        if pattern == "*":
            self.everything.append(value)
        elif pattern.startswith("*."):
            self.below.setdefault(pattern[2:], []).append(value)
        elif pattern.startswith("."):
            self.at_or_below.setdefault(pattern[1:], []).append(value)
        elif "*" in pattern:
            label, _, parent = pattern.partition(".")
            regex = re.compile(fnmatch.translate(label))
            self.globs.setdefault(parent, []).append((regex, value))
        else:
            self.exact.setdefault(pattern, []).append(value)

    def __len__(self) -> int:
        return (sum(map(len, self.exact.values())) + sum(map(len, self.below.values()))
                + sum(map(len, self.at_or_below.values())) + sum(map(len, self.globs.values()))
                + len(self.everything))

    def matches(self, host: str) -> Iterator[T]:
        """Every value whose pattern matches `host` (in no particular order)."""
        found = self.exact.get(host)
        if found:
            yield from found
        found = self.at_or_below.get(host)
        if found:
            yield from found
        if self.everything:
            yield from self.everything
        dot = host.find(".")
        if dot < 0:
            return
        first_label = host[:dot]
        parent = host[dot + 1:]
        globs = self.globs.get(parent)
        if globs:
            for regex, value in globs:
                if regex.fullmatch(first_label):
                    yield value
        while True:
            found = self.below.get(parent)
            if found:
                yield from found
            found = self.at_or_below.get(parent)
            if found:
                yield from found
            dot = parent.find(".")
            if dot < 0:
                return
            parent = parent[dot + 1:]
