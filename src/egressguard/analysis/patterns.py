"""Set relations between host patterns (semantics §3): subsumption, overlap, exposure.

The engine answers "does this host match this pattern" (`engine.hostindex.HostIndex`); the
analyser needs relations between *patterns*: does `A` cover every host `B` covers (then a
later `B` is never reached), do `A` and `B` share a host (an allow/deny overlap), and can
an attacker choose a name that `A` matches under a shared zone (their own storage account,
front door endpoint, SQL server). Patterns are the canonical text produced by
`policy.model.validate_host_pattern`; every answer here is checked against the engine's
own matcher in the property tests (`tests/analysis/test_patterns.py`).

A pattern is split into *atoms* with simple semantics:

* `ALL`            `*`: every name
* `EXACT(h)`       `h`
* `BELOW(z)`       `*.z`: every strict subdomain of `z`, at any depth
* `GLOB(g, z)`     `g.z`: one label directly under `z` matching the glob `g` (only `*`)

`.z` is `EXACT(z) + BELOW(z)`.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache

from egressguard.engine.hostindex import HostIndex

PROBE_LABEL = "exfil0probe"
"""The name an attacker picks for their own resource in exposure probes."""


class AtomKind(enum.Enum):
    ALL = "all"
    EXACT = "exact"
    BELOW = "below"
    GLOB = "glob"


@dataclass(frozen=True, slots=True)
class Atom:
    kind: AtomKind
    zone: str = ""  # EXACT: the host; BELOW/GLOB: the parent domain
    glob: str = ""  # GLOB only: the leftmost-label glob


def atoms(pattern: str) -> tuple[Atom, ...]:
    """Split a canonical pattern into atoms, mirroring how `HostIndex.add` files it."""
    if pattern == "*":
        return (Atom(AtomKind.ALL),)
    if pattern.startswith("*."):
        return (Atom(AtomKind.BELOW, pattern[2:]),)
    if pattern.startswith("."):
        return (Atom(AtomKind.EXACT, pattern[1:]), Atom(AtomKind.BELOW, pattern[1:]))
    if "*" in pattern:
        label, _, parent = pattern.partition(".")
        return (Atom(AtomKind.GLOB, parent, label),)
    return (Atom(AtomKind.EXACT, pattern),)


def _at_or_under(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _under(name: str, zone: str) -> bool:
    return name.endswith("." + zone)


@lru_cache(maxsize=4096)
def _glob_regex(glob: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(glob))


def matches(pattern: str, host: str) -> bool:
    """Whether the engine's matcher says `host` (normalised) matches `pattern`."""
    index: HostIndex[bool] = HostIndex()
    index.add(pattern, True)
    return any(index.matches(host))


def glob_includes(outer: str, inner: str) -> bool:
    """Every string `inner` matches is matched by `outer` (globs using only `*`).

    Sound by construction: `outer` must match `inner` read literally, where a `*` of
    `inner` can only be absorbed by a `*` of `outer`; whatever `inner`'s stars later
    stand for is then absorbed by the same stars of `outer`.
    """

    @cache
    def walk(i: int, j: int) -> bool:
        if i == len(outer):
            return j == len(inner)
        if outer[i] == "*":
            return walk(i + 1, j) or (j < len(inner) and walk(i, j + 1))
        return j < len(inner) and inner[j] != "*" and inner[j] == outer[i] and walk(i + 1, j + 1)

    return walk(0, 0)


def glob_witness(first: str, second: str) -> str | None:
    """A non-empty label both globs match, or None when they share none."""

    @cache
    def walk(i: int, j: int) -> str | None:
        if i == len(first) and j == len(second):
            return ""
        if i < len(first) and first[i] == "*":
            found = walk(i + 1, j)
            if found is not None:
                return found
            if j < len(second) and second[j] != "*":
                tail = walk(i, j + 1)
                return None if tail is None else second[j] + tail
            if j < len(second):
                return walk(i, j + 1)
            return None
        if j < len(second) and second[j] == "*":
            found = walk(i, j + 1)
            if found is not None:
                return found
            if i < len(first):
                tail = walk(i + 1, j)
                return None if tail is None else first[i] + tail
            return None
        if i < len(first) and j < len(second) and first[i] == second[j]:
            tail = walk(i + 1, j + 1)
            return None if tail is None else first[i] + tail
        return None

    found = walk(0, 0)
    if found == "":  # both are all-stars; any label will do
        found = "x"
    return found


def _atom_covers(outer: Atom, inner: Atom) -> bool:
    if outer.kind is AtomKind.ALL:
        return True
    if inner.kind is AtomKind.ALL:
        return False
    if outer.kind is AtomKind.EXACT:
        return inner.kind is AtomKind.EXACT and inner.zone == outer.zone
    if outer.kind is AtomKind.BELOW:
        if inner.kind is AtomKind.EXACT:
            return _under(inner.zone, outer.zone)
        return _at_or_under(inner.zone, outer.zone)  # BELOW or GLOB hang below the zone
    # outer is GLOB(g, z): exactly one label under z.
    if inner.kind is AtomKind.EXACT:
        label, _, parent = inner.zone.partition(".")
        return parent == outer.zone and bool(_glob_regex(outer.glob).fullmatch(label))
    if inner.kind is AtomKind.GLOB:
        return inner.zone == outer.zone and glob_includes(outer.glob, inner.glob)
    return False


def subsumes(outer: str, inner: str) -> bool:
    """Every host `inner` matches is also matched by `outer` (sound; may miss odd unions)."""
    outer_atoms = atoms(outer)
    return all(any(_atom_covers(o, i) for o in outer_atoms) for i in atoms(inner))


def _atom_witness(a: Atom, b: Atom) -> str | None:
    if a.kind is AtomKind.ALL and b.kind is AtomKind.ALL:
        return f"{PROBE_LABEL}.example"
    if a.kind is AtomKind.ALL:
        return _atom_witness(b, b)
    if b.kind is AtomKind.ALL:
        return _atom_witness(a, a)
    if a.kind is AtomKind.EXACT:
        return a.zone if _atom_covers(b, a) else None
    if b.kind is AtomKind.EXACT:
        return b.zone if _atom_covers(a, b) else None
    if a.kind is AtomKind.BELOW and b.kind is AtomKind.BELOW:
        deeper = a.zone if len(a.zone) >= len(b.zone) else b.zone
        shallower = b.zone if deeper == a.zone else a.zone
        return f"{PROBE_LABEL}.{deeper}" if _at_or_under(deeper, shallower) else None
    if a.kind is AtomKind.GLOB and b.kind is AtomKind.GLOB:
        if a.zone != b.zone:
            return None
        label = glob_witness(a.glob, b.glob)
        return None if label is None else f"{label}.{a.zone}"
    glob, below = (a, b) if a.kind is AtomKind.GLOB else (b, a)
    if not _at_or_under(glob.zone, below.zone):
        return None
    return f"{glob.glob.replace('*', 'x')}.{glob.zone}"


def overlap_witness(first: str, second: str) -> str | None:
    """A host both patterns match (verified with the engine's matcher), or None."""
    for a in atoms(first):
        for b in atoms(second):
            host = _atom_witness(a, b)
            if host is not None and matches(first, host) and matches(second, host):
                return host
    return None


def attacker_host(pattern: str, zone: str,
                  label_ok: Callable[[str], bool] = lambda _label: True) -> str | None:
    """A host under `zone` whose leftmost label an attacker chooses and `pattern` matches.

    `zone` is a shared suffix where anyone can create a resource named by one label
    (`blob.core.windows.net`, `azurefd.net`); `label_ok` says which names are creatable
    there (storage accounts are 3-24 lower-case letters and digits). Returns an example
    such as `exfil0probe.blob.core.windows.net`, or None when the pattern only reaches
    names someone else already owns.
    """
    for atom in atoms(pattern):
        if atom.kind is AtomKind.ALL or (atom.kind is AtomKind.BELOW
                                         and _at_or_under(zone, atom.zone)):
            label = PROBE_LABEL
        elif atom.kind is AtomKind.GLOB and atom.zone == zone:
            label = atom.glob.replace("*", PROBE_LABEL)
        else:
            continue
        host = f"{label}.{zone}"
        if label_ok(label) and matches(pattern, host):
            return host
    return None
