"""Read and write policy files (YAML or JSON) with errors that point at the line.

A policy file is YAML (JSON is valid YAML, so `.json` files load the same way). Validation
errors name the file, the line and column, the path inside the document and the reason, so
an operator can fix a rejected file without guessing; nothing here touches the running
policy, which callers replace only after a load succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from egressguard.errors import InputError
from egressguard.policy.model import Policy


@dataclass(frozen=True)
class Problem:
    """One reason a policy was rejected."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        at = f"{self.path}: " if self.path else ""
        return f"{where}{at}{self.reason}"


class PolicyError(InputError, ValueError):
    """A policy document was rejected; `problems` lists every reason found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"invalid policy {source}:\n{lines}")


def _node_at(root: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """Follow a pydantic error location through the YAML node tree."""
    node = root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                if knode.value == key:
                    node = vnode
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return node
            node = node.value[key]
        else:
            return node
    return node


def _subject(data: Any, loc: tuple[int | str, ...]) -> str:
    """Which rule an error is about, e.g. `rule 'registry' in collection 'aks'`, so an
    operator can find it by name as well as by path."""
    names: list[str] = []
    node = data
    for key in loc:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, dict) and isinstance(node.get("name"), str):
            names.append(node["name"])
    if len(loc) >= 2 and loc[0] == "callouts" and isinstance(loc[1], int):
        entry = node if len(loc) == 2 else data["callouts"][loc[1]]
        kind = entry.get("callout_type", entry.get("CalloutType")) if isinstance(
            entry, dict) else None
        return f"callout entry {loc[1]}" + (f" ({kind})" if kind else "")
    if len(names) >= 2:
        return f"rule {names[-1]!r} in collection {names[-2]!r}"
    if names:
        return f"{'policy' if loc[0] == 'service_endpoint_policies' else 'collection'} " \
               f"{names[0]!r}"
    return ""


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document; raise `PolicyError` naming every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [Problem("", line, f"not valid YAML/JSON: {reason}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(source, [Problem("", 1, "the document must be a mapping")])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = _node_at(root, loc)
            line = node.start_mark.line + 1 if node is not None else None
            reason = err["msg"].removeprefix("Value error, ")
            subject = _subject(data, loc)
            if subject:
                reason = f"{reason} ({subject})"
            problems.append(Problem(_path(loc), line, reason))
        raise PolicyError(source, problems) from None


def load_policy(path: str | Path) -> Policy:
    """Load a policy file; raises `PolicyError` (also for a missing or unreadable file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), [Problem("", None, f"cannot read: {exc}")]) from None
    return load_policy_text(text, str(path))


def policy_to_data(policy: Policy) -> dict[str, Any]:
    """The policy as plain data in the file format (defaults omitted, strings for specs)."""
    data = policy.model_dump(mode="json", exclude_defaults=True)
    for kind in ("application_rule_collections", "network_rule_collections"):
        for collection in data.get(kind, []):
            for rule in collection.get("rules", []):
                if "protocols" in rule and kind.startswith("application"):
                    rule["protocols"] = [f"{p['protocol']}:{p['port'] or '*'}"
                                         for p in rule["protocols"]]
                if "ports" in rule:
                    rule["ports"] = [_port_text(p) for p in rule["ports"]]
    return data


def _port_text(port: dict[str, int]) -> str:
    low, high = port["low"], port["high"]
    if (low, high) == (0, 65535):
        return "*"
    return str(low) if low == high else f"{low}-{high}"


def dump_policy(policy: Policy) -> str:
    """Serialise a policy as YAML that `load_policy_text` reads back to an equal policy."""
    return yaml.safe_dump(policy_to_data(policy), sort_keys=False, allow_unicode=True)
