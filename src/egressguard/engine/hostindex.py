"""Host-pattern index: exact names in a dict, wildcards in a label trie.

Patterns (semantics §3) are stored under the domain they hang from, so a lookup costs
one dict probe for the exact name and one per label of the host, however many patterns
the policy holds:

* `a.b.com`    -> `exact["a.b.com"]`
* `*.b.com`    -> `below["b.com"]`     (strict subdomains only)
* `.b.com`     -> `at_or_below["b.com"]` (the name itself and every subdomain)
* `md-*.b.com` -> `globs["b.com"]`     (one leftmost label matching the glob)
* `*`          -> `everything`

The last three also live in a trie keyed by labels from the right (`com` -> `b` -> ...),
so the walk splits the host once and stops at the first label no pattern hangs below;
a host under a top-level domain no wildcard uses costs a single probe. (Each string
method call costs ~3 dict probes in CPython, so the walk avoids slicing suffixes.)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_Node = tuple[list[T], list[T], list[tuple[re.Pattern[str], T]]]
_DATA = ""  # trie key of a node's patterns (a label is never empty)


class HostIndex(Generic[T]):
    """Maps canonical host patterns to values; `matches(host)` yields every value that
    applies to a normalised host name."""

    __slots__ = ("_trie", "at_or_below", "below", "everything", "exact", "globs")

    def __init__(self) -> None:
        self.exact: dict[str, list[T]] = {}
        self.below: dict[str, list[T]] = {}
        self.at_or_below: dict[str, list[T]] = {}
        self.globs: dict[str, list[tuple[re.Pattern[str], T]]] = {}
        self.everything: list[T] = []
        self._trie: dict[str, Any] = {}

    def _node(self, domain: str) -> _Node[T]:
        trie = self._trie
        for label in reversed(domain.split(".")):
            trie = trie.setdefault(label, {})
        node: _Node[T] | None = trie.get(_DATA)
        if node is None:
            node = trie[_DATA] = (
                self.below.setdefault(domain, []), self.at_or_below.setdefault(domain, []),
                self.globs.setdefault(domain, []))
        return node

    def add(self, pattern: str, value: T) -> None:
        """Add a pattern already canonicalised by `policy.model.validate_host_pattern`."""
        if pattern == "*":
            self.everything.append(value)
        elif pattern.startswith("*."):
            self._node(pattern[2:])[0].append(value)
        elif pattern.startswith("."):
            self._node(pattern[1:])[1].append(value)
        elif "*" in pattern:
            label, _, parent = pattern.partition(".")
            regex = re.compile(fnmatch.translate(label))
            self._node(parent)[2].append((regex, value))
        else:
            self.exact.setdefault(pattern, []).append(value)

    def __len__(self) -> int:
        return (sum(map(len, self.exact.values())) + sum(map(len, self.below.values()))
                + sum(map(len, self.at_or_below.values())) + sum(map(len, self.globs.values()))
                + len(self.everything))

    def __bool__(self) -> bool:
        return bool(self.exact or self._trie or self.everything)

    def candidates(self, host: str) -> list[Sequence[T]]:
        """The lists of values whose pattern matches `host` (the hot path: no generator)."""
        out: list[Sequence[T]] = []
        found = self.exact.get(host)
        if found:
            out.append(found)
        if self.everything:
            out.append(self.everything)
        trie: dict[str, Any] | None = self._trie
        if not trie:
            return out
        labels = host.split(".")
        i = len(labels) - 1
        while i >= 0:
            trie = trie.get(labels[i])
            if trie is None:
                break
            node = trie.get(_DATA)
            if node is not None:
                below, at_or_below, globs = node
                if at_or_below:
                    out.append(at_or_below)
                if i > 0 and below:
                    out.append(below)
                if i == 1 and globs:  # a glob covers exactly one label below its parent
                    first = labels[0]
                    out.append([value for regex, value in globs if regex.fullmatch(first)])
            i -= 1
        return out

    def matches(self, host: str) -> Iterator[T]:
        """Every value whose pattern matches `host` (in no particular order)."""
        for values in self.candidates(host):
            yield from values
