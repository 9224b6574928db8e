"""`-o/--output table|wide|json|yaml`: the one way a command prints data.

kubectl's habit: `-o` is always a format, never a file (files are `--out FILE`). `json` and
`yaml` print the same data (what scripts read); `table` is for people, folded to the
terminal; `wide` prints every column in full (and extra columns where a command has them).
Rich and YAML load only when a command prints, so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


class Format(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[Format, typer.Option(
    "--output", "-o", case_sensitive=False, help="table, wide, json or yaml")]

Renderer = Callable[[], "RenderableType | str"]

# Piped output (tests, CI logs) does not wrap mid-row; `wide` never folds.
PIPE_WIDTH, WIDE_WIDTH = 240, 10_000


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def to_yaml(data: Any) -> str:
    import yaml

    # Through JSON first: the YAML shows exactly what `-o json` does (dates as strings).
    return yaml.safe_dump(json.loads(to_json(data)), sort_keys=False, allow_unicode=True,
                          width=WIDE_WIDTH)


def is_data(output: Format | str) -> bool:
    """json or yaml: for scripts (the same data either way)."""
    return Format(output) in (Format.JSON, Format.YAML)


def console(wide: bool = False) -> Console:
    """A console for human output: the terminal's width, 240 columns when piped (rows do
    not wrap in CI logs), unbounded for `wide`."""
    from rich.console import Console

    width = WIDE_WIDTH if wide else None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(width=width, highlight=False, soft_wrap=wide)


def render(thing: RenderableType | str, wide: bool = False) -> None:
    """Print a rich renderable (or plain text) to stdout."""
    if isinstance(thing, str):
        sys.stdout.write(thing if thing.endswith("\n") else thing + "\n")
        return
    console(wide).print(thing)


def emit(data: Any, output: Format | str, table: Renderer | None = None,
         wide: Renderer | None = None) -> None:
    """Print `data` in `output`'s format; `table`/`wide` build the human forms on demand
    (without them, a table is the YAML)."""
    fmt = Format(output)
    if fmt is Format.JSON:
        sys.stdout.write(to_json(data) + "\n")
    elif fmt is Format.YAML or table is None:
        sys.stdout.write(to_yaml(data))
    elif fmt is Format.WIDE:
        render((wide or table)(), wide=True)
    else:
        render(table())
