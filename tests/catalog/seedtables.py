"""Read the markdown tables of the seed documents, so tests can compare them to the catalog.

Deliberately independent of the catalog code: it parses the seeds' own text (headings,
pipe tables, backticked destinations), so a seed edit that the catalog does not follow
shows up as a failing test instead of silently diverging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SEEDS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "seeds").resolve()
NO_SEEDS = (f"the seed articles are not beside this clone ({SEEDS} is absent): the "
            "catalog-against-seed comparisons need them")

_HEADING = re.compile(r"^(#{2,6})\s+(.*?)\s*$")
_TICKS = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\](?:\[[^\]]*\]|\([^)]*\))")


def seed_path(number: str) -> Path:
    """The seed file whose name starts with `number` (e.g. '003'); skips the calling test
    when the seeds folder is absent (a clone on its own)."""
    if not SEEDS.is_dir():
        pytest.skip(NO_SEEDS)
    found = sorted(SEEDS.glob(f"{number}_*.txt"))
    if not found:
        raise FileNotFoundError(f"no seed {number}_*.txt in {SEEDS.resolve()}")
    return found[0]


def plain(text: str) -> str:
    """Markdown cell text as prose: links reduced to their text, emphasis and ticks removed."""
    text = _LINK.sub(r"\1", text)
    text = text.replace("<br/>", " ").replace("**", "").replace("`", "")
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class SeedRow:
    section: str                 # heading chain from level 2, joined with " > "
    destinations: tuple[str, ...]  # backticked values, ':port' suffix removed
    protocol: str | None         # as the seed states it, upper-case; None if not stated
    port: int
    use: str                     # the Use/Purpose cell as plain text
    line: int


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _destinations(cell: str, port: int) -> tuple[str, ...]:
    out: list[str] = []
    for token in _TICKS.findall(cell):
        if token.startswith("("):
            continue  # a backticked note such as `(only known after cluster creation)`
        for part in token.split(","):
            part = part.strip()
            if part.endswith(f":{port}"):
                part = part[: -len(f":{port}")]
            if part:
                out.append(part)
    return tuple(out)


def _port(cell: str) -> tuple[str | None, int]:
    text = plain(cell).replace(" ", "")
    proto, _, port = text.rpartition(":")
    return (proto.upper() or None), int(port)


def read_tables(path: Path) -> list[SeedRow]:
    """Every data row of every pipe table in the file, with its heading chain."""
    chain: list[tuple[int, str]] = []
    rows: list[SeedRow] = []
    header: list[str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            chain = [(lv, t) for lv, t in chain if lv < level] + [(level, heading.group(2))]
            header = None
            continue
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if all(set(c) <= set(":- ") for c in cells):
            continue
        col = {name: i for i, name in enumerate(header)}
        proto_cell = cells[col["protocol"]] if "protocol" in col else None
        stated, port = _port(cells[col["port"]])
        use_col = col.get("use", col.get("purpose"))
        rows.append(SeedRow(
            section=" > ".join(t for _, t in chain),
            destinations=_destinations(cells[0], port),
            protocol=(plain(proto_cell).upper() if proto_cell else stated),
            port=port,
            use=plain(cells[use_col]) if use_col is not None else "",
            line=number))
    return rows
