"""Read and write policy files (YAML or JSON) with errors that point at the line.

A policy file is YAML or JSON. Validation errors name the file, the line and column, the
path inside the document and the reason, so an operator can fix a rejected file without
guessing; nothing here touches the running policy, which callers replace only after a load
succeeds.

The loader fails closed on documents that would otherwise load as something the operator
did not write: an empty file (a truncate-then-write edit caught half way) is not the
allow-all default; a duplicate key is not "last one wins" (`restrict…: Enabled` then
`Disabled`); several documents, a non-mapping document, nesting deeper than
`MAX_DEPTH` and alias expansion beyond `MAX_NODES` are refused before validation.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from egressguard.errors import InputError
from egressguard.policy.model import ApplicationRule, NetworkRule, Policy
from egressguard.policy.packed import PACK_AT, Packer, RuleList, consuming, dump_rules

MAX_DEPTH = 64  # a real policy nests 6 deep; far deeper is an attack or an accident
MAX_NODES = 1_000_000  # nodes after alias expansion (a "billion laughs" stays bounded)

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # same text


class _Rejected(Exception):
    """A structural reason to refuse the document, with the line it is at."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """The safe loader (libyaml where available), refusing duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says why
                break
            seen[key] = line
            if first is not None:
                raise _Rejected(line, f"duplicate key {key!r} (first at line {first}): a "
                                      "repeated key is refused, not decided by the last one")
        return super().construct_mapping(node, deep=deep)


def _check_shape(root: yaml.Node) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and alias expansion beyond `MAX_NODES`,
    without recursion (aliases make the tree a graph: a node is measured again only when
    reached deeper than before, so the walk stays linear in practice)."""
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    mapping, sequence = yaml.MappingNode, yaml.SequenceNode
    stack: list[tuple[yaml.Node, int, list[yaml.Node] | None]] = [(root, 1, None)]
    while stack:
        node, level, done = stack.pop()
        if done is not None:
            total = 1 + sum(size[id(c)] for c in done)
            if total > MAX_NODES:
                raise _Rejected(node.start_mark.line + 1,
                                f"expands to more than {MAX_NODES} values (aliases)")
            size[id(node)] = total
            continue
        if level > MAX_DEPTH:
            raise _Rejected(node.start_mark.line + 1,
                            f"nested deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in size and depth[key] >= level:
            continue  # already measured at this depth or deeper
        depth[key] = level
        if isinstance(node, sequence):
            children: list[yaml.Node] = node.value
        elif isinstance(node, mapping):
            children = [n for pair in node.value for n in pair]
        else:
            size[key] = 1
            continue
        stack.append((node, level, children))
        stack.extend((c, level + 1, None) for c in children)


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


def _short(text: str, limit: int = 64) -> str:
    """`text` cut for an error message: an over-long value is refused, not echoed."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"


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
            names.append(_short(node["name"]))
    if len(loc) >= 2 and loc[0] == "callouts" and isinstance(loc[1], int):
        entry = node if len(loc) == 2 else data["callouts"][loc[1]]
        kind = entry.get("callout_type", entry.get("CalloutType")) if isinstance(
            entry, dict) else None
        return f"callout entry {loc[1]}" + (f" ({_short(kind)})" if isinstance(
            kind, str) and kind else "")
    if len(names) >= 2:
        return f"rule {names[-1]!r} in collection {names[-2]!r}"
    if names:
        kind = {"service_endpoint_policies": "policy", "budgets": "budget",
                "assertions": "assertion"}.get(str(loc[0]), "collection")
        return f"{kind} {names[0]!r}"
    return ""


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()  # several documents: "expected a single document"
        if root is not None:
            _check_shape(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        if "another document" in reason:
            reason = "more than one document (`---`); a policy file holds exactly one"
        else:
            reason = f"not valid YAML/JSON: {reason}"
        raise PolicyError(source, [Problem("", line, reason)]) from None
    except _Rejected as exc:
        raise PolicyError(source, [Problem("", exc.line, exc.reason)]) from None
    except RecursionError:  # the pure-Python loader, where libyaml is missing
        raise PolicyError(source, [Problem("", None, f"nested deeper than {MAX_DEPTH} "
                                                     "levels")]) from None
    finally:
        loader.dispose()
    return root, data


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # name the first key that repeats
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected(None, f"duplicate key {key!r}: a repeated key is refused, "
                                      "not decided by the last one")
            seen.add(key)
    return out


def _json_depth(data: Any) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, level + 1) for v in items)
    return deepest


_TOO_DEEP = object()


def _parse_json(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """JSON with JSON's own errors; duplicate keys refused (`object_pairs_hook`)."""
    try:
        data = json.loads(text, object_pairs_hook=_json_pairs)
    except json.JSONDecodeError as exc:
        if not source.lower().endswith(".json"):
            return _parse_yaml(text, source)  # YAML flow style, e.g. `{a: 1}`
        raise PolicyError(source, [Problem("", exc.lineno, f"not valid JSON: {exc.msg} "
                                                           f"(column {exc.colno})")]) from None
    except _Rejected as exc:
        _parse_yaml(text, source)  # the YAML loader names the duplicate's line
        raise PolicyError(source, [Problem("", None, exc.reason)]) from None
    except RecursionError:
        data = _TOO_DEEP
    if data is _TOO_DEEP or _json_depth(data) > MAX_DEPTH:
        if data is not _TOO_DEEP:
            _parse_yaml(text, source)  # names the line where it gets too deep
        raise PolicyError(source, [Problem("", None, f"nested deeper than {MAX_DEPTH} "
                                                     "levels")])
    try:  # the same document as YAML, only to point validation errors at their lines
        root = yaml.compose(text, Loader=_BaseLoader)
    except yaml.YAMLError:
        root = None
    return root, data


def parse_document(text: str, source: str = "<policy>") -> tuple[yaml.Node | None, Any]:
    """The document as (YAML node tree for line numbers, plain data); raises `PolicyError`
    for anything that is not exactly one non-empty mapping of bounded depth."""
    if not text.strip():
        raise PolicyError(source, [Problem("", 1, "the policy is empty (a file being "
                                                  "written?); write at least "
                                                  "`restrict_outbound_network_access`")])
    stripped = text.lstrip()
    if stripped.startswith("{") or source.lower().endswith(".json"):
        root, data = _parse_json(text, source)
    else:
        root, data = _parse_yaml(text, source)
    if not isinstance(data, dict):
        kind = "nothing" if data is None else type(data).__name__
        line = root.start_mark.line + 1 if root is not None else 1
        raise PolicyError(source, [Problem("", line, f"the document must be a mapping, "
                                                     f"not {kind}")])
    return root, data


# Where each loaded policy came from (source name, text), so that an error found later (an
# unknown tag when the policy is compiled) can name the file and line too. Kept beside
# the policy, not in it: a private attribute would make equal policies compare unequal.
_ORIGINS: dict[int, tuple[str, str]] = {}


def _remember(policy: Policy, source: str, text: str) -> Policy:
    _ORIGINS[id(policy)] = (source, text)
    weakref.finalize(policy, _ORIGINS.pop, id(policy), None)
    return policy


def locate(policy: Policy, loc: tuple[int | str, ...]) -> str:
    """Where `loc` (a path into the document, as pydantic gives one) is in `policy`'s
    source: `file:line: path` (as `egressguard validate` prints) when it was loaded from
    text, else the path alone."""
    path = _path(loc)
    origin = _ORIGINS.get(id(policy))
    if origin is None:
        return path
    source, text = origin
    try:
        node = _node_at(parse_document(text, source)[0], loc)
    except PolicyError:
        node = None
    line = f"{node.start_mark.line + 1}:" if node is not None else ""
    return f"{source}:{line} {path}"
_WS = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]
_SCAN_STRING = json.decoder.scanstring  # type: ignore[attr-defined]
_DECODER = json.JSONDecoder(object_pairs_hook=_json_pairs)
_RULES: dict[str, type[ApplicationRule] | type[NetworkRule]] = {
    "application_rule_collections": ApplicationRule, "network_rule_collections": NetworkRule}


def _ws(text: str, idx: int) -> int:
    return _WS(text, idx).end()


def _json_object(text: str, idx: int, value: Callable[[str, int], tuple[Any, int]]
                 ) -> tuple[dict[str, Any], int]:
    """The object at `text[idx] == "{"`, each member's value read by `value(key, idx)`;
    ValueError for a duplicate key or anything `json.loads` would refuse."""
    out: dict[str, Any] = {}
    idx = _ws(text, idx + 1)
    if text[idx] == "}":
        return out, idx + 1
    while True:
        if text[idx] != '"':
            raise ValueError("expected a key")
        key, idx = _SCAN_STRING(text, idx + 1)
        idx = _ws(text, idx)
        if text[idx] != ":" or key in out:
            raise ValueError("expected ':' or a new key")
        out[key], idx = value(key, _ws(text, idx + 1))
        idx = _ws(text, idx)
        if text[idx] == "}":
            return out, idx + 1
        if text[idx] != ",":
            raise ValueError("expected ',' or '}'")
        idx = _ws(text, idx + 1)


def _json_array(text: str, idx: int, item: Callable[[int], tuple[Any, int]]) -> int:
    """Read the array at `text[idx] == "["`, each item by `item(idx)`; its end."""
    idx = _ws(text, idx + 1)
    if text[idx] == "]":
        return idx + 1
    while True:
        idx = _ws(text, item(idx)[1])
        if text[idx] == "]":
            return idx + 1
        if text[idx] != ",":
            raise ValueError("expected ',' or ']'")
        idx = _ws(text, idx + 1)


def _json_streamed(text: str) -> dict[str, Any]:
    """The document's data, each collection's rules validated as they are read and kept
    packed from `PACK_AT` rules: a big document is never held as parsed JSON (half a
    gigabyte at a million rules). Raises for anything the line-aware path must judge."""
    scan = _DECODER.scan_once  # type: ignore[attr-defined]

    def rules(model: type[ApplicationRule | NetworkRule], idx: int) -> tuple[Any, int]:
        plain: list[Any] = []
        packer: Packer[Any] | None = None

        def item(at: int) -> tuple[Any, int]:
            nonlocal packer
            rule, end = scan(text, at)
            if packer is None and len(plain) < PACK_AT:
                plain.append(rule)
            else:
                if packer is None:
                    packer = Packer(model)
                    for earlier in plain:
                        packer.add(model.model_validate(earlier))
                    plain.clear()
                packer.add(model.model_validate(rule))
            return None, end

        end = _json_array(text, idx, item)
        return (plain if packer is None else packer.rules()), end

    def collection(model: type[ApplicationRule | NetworkRule], idx: int) -> tuple[Any, int]:
        if text[idx] != "{":
            return scan(text, idx)
        return _json_object(text, idx, lambda key, at: rules(model, at) if (
            key == "rules" and text[at] == "[") else scan(text, at))

    def member(key: str, idx: int) -> tuple[Any, int]:
        model = _RULES.get(key)
        if model is None or text[idx] != "[":
            return scan(text, idx)
        found: list[Any] = []

        def item(at: int) -> tuple[Any, int]:
            value, end = collection(model, at)
            found.append(value)
            return value, end

        return found, _json_array(text, idx, item)

    start = _ws(text, 0)
    if text[start] != "{":
        raise ValueError("not an object")
    data, end = _json_object(text, start, member)
    if _ws(text, end) != len(text):
        raise ValueError("extra data")
    return data


def _fast_json(text: str) -> Policy | None:
    """A valid JSON document validated without the YAML node tree (big policies: the
    store's JSON form of a version); None for anything else, which the line-aware path
    then reports. The same checks: duplicate keys, a mapping, the model; and depth, as
    no field takes free-form data: a document that validates nests no deeper than the
    model (7 levels), and one nested deeper than `MAX_DEPTH` fails validation and is
    refused as too deep by the line-aware path (walking a big tree costs a second)."""
    try:
        return Policy.model_validate(_json_streamed(text))
    except (ValueError, IndexError, StopIteration, _Rejected, RecursionError):
        return None  # ValidationError is a ValueError


def _consume_big_collections(data: dict[str, Any]) -> None:
    """Let validation free each big collection's parsed rules as it packs them (a
    million parsed rules are half a gigabyte): `data` is not read again."""
    for kind in ("application_rule_collections", "network_rule_collections"):
        collections = data.get(kind)
        for collection in collections if isinstance(collections, list) else ():
            rules = collection.get("rules") if isinstance(collection, dict) else None
            if isinstance(rules, list) and len(rules) >= PACK_AT:
                collection["rules"] = consuming(rules)


_EVENTS = getattr(yaml, "_yaml", None)  # libyaml's parser, where PyYAML was built with it
_CONSTRUCTED = frozenset(f"tag:yaml.org,2002:{t}" for t in (
    "bool", "int", "float", "null", "timestamp"))
_STR = "tag:yaml.org,2002:str"


def _yaml_data(text: str) -> Any:
    """The document libyaml's events spell, built as the safe loader would build it
    (the same parser, the loader's own implicit resolvers and scalar constructors), or
    None for anything the fast path leaves to the line-aware one: an error, a duplicate
    key, an anchor, alias, explicit tag or merge key, more than one document, nesting
    deeper than `MAX_DEPTH`, more than `MAX_NODES` values. Event by event in Python, so
    it holds the GIL in short calls."""
    if _EVENTS is None:
        return None
    resolvers = _BaseLoader.yaml_implicit_resolvers
    wildcard = resolvers.get(None, [])
    constructor = yaml.constructor.SafeConstructor()
    constructors = constructor.yaml_constructors
    scalar_event, end_events = yaml.ScalarEvent, (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    parser = _EVENTS.CParser(text)
    stack: list[tuple[Any, Any]] = []  # (the open mapping or list, a mapping's pending key)
    nodes = 0
    root: Any = None
    done = False
    try:
        for kind in (yaml.StreamStartEvent, yaml.DocumentStartEvent):
            if not isinstance(parser.get_event(), kind):
                return None
        while not done:
            event = parser.get_event()
            cls = event.__class__
            if cls in end_events:
                value = stack.pop()[0]
            else:
                nodes += 1
                if nodes > MAX_NODES or event.anchor is not None or cls is yaml.AliasEvent \
                        or event.tag is not None:
                    return None
                if cls is scalar_event:
                    value = event.value
                    if event.implicit[0]:  # plain: the loader's implicit resolvers
                        for tag, regexp in resolvers.get(value[:1], []) + wildcard:
                            if regexp.match(value):
                                if tag not in _CONSTRUCTED:
                                    return None
                                value = constructors[tag](
                                    constructor, yaml.ScalarNode(tag, value))
                                break
                elif cls is mapping_start or cls is sequence_start:
                    if len(stack) >= MAX_DEPTH:
                        return None
                    stack.append(({} if cls is mapping_start else [], _NO_KEY))
                    continue
                else:
                    return None
            if not stack:
                root, done = value, True
                continue
            container, key = stack[-1]
            if container.__class__ is list:
                container.append(value)
            elif key is _NO_KEY:
                if value.__class__ in (dict, list) or value in container:
                    return None  # a collection as a key, or a duplicate: reported slowly
                stack[-1] = (container, value)
            else:
                container[key] = value
                stack[-1] = (container, _NO_KEY)
        if not isinstance(parser.get_event(), yaml.DocumentEndEvent) or \
                not isinstance(parser.get_event(), yaml.StreamEndEvent):
            return None
    except (yaml.YAMLError, ValueError, TypeError):
        return None
    finally:
        parser.dispose()
    return root


_NO_KEY = object()


def _fast_yaml(text: str, source: str) -> Policy | None:
    """A valid YAML document validated without the node tree (`_yaml_data`); None for
    anything else, which the line-aware path then reports."""
    data = _yaml_data(text)
    if not isinstance(data, dict):
        return None
    _consume_big_collections(data)
    try:
        return _remember(Policy.model_validate(data), source, text)
    except ValidationError:
        return None


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document; raise `PolicyError` naming every problem."""
    if text.lstrip().startswith("{"):
        fast = _fast_json(text)
    else:
        fast = None if source.lower().endswith(".json") else _fast_yaml(text, source)
    if fast is not None:
        return fast
    root, data = parse_document(text, source)
    try:
        return _remember(Policy.model_validate(data), source, text)
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
    """The policy as plain data in the file format (defaults omitted, strings for specs).
    Packed collections are dumped a slice of rules at a time, beside the rest (dumped
    through the model, a packed list's data passes through pydantic once more in one
    native call)."""
    packed: dict[tuple[str, int], RuleList[Any]] = {}
    changes: dict[str, Any] = {}
    for kind in ("application_rule_collections", "network_rule_collections"):
        collections = getattr(policy, kind)
        for i, collection in enumerate(collections):
            if isinstance(collection.rules, RuleList):
                packed[kind, i] = collection.rules
        if any(k == kind for k, _ in packed):
            changes[kind] = [c.model_copy(update={"rules": []}) if (kind, i) in packed else c
                             for i, c in enumerate(collections)]
    data = policy.model_copy(update=changes).model_dump(mode="json", exclude_defaults=True)
    for (kind, i), rules in packed.items():
        data[kind][i]["rules"] = dump_rules(rules, mode="json", exclude_defaults=True)
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
    return yaml_text(policy_to_data(policy))


def yaml_text(data: dict[str, Any]) -> str:
    """`policy_to_data`'s data as the YAML `dump_policy` writes."""
    return yaml.dump(data, Dumper=_Dumper, **YAML_OPTIONS)


YAML_OPTIONS: dict[str, Any] = {"sort_keys": False, "allow_unicode": True}


def dump_policy_json(policy: Policy) -> str:
    """The policy as compact JSON that `load_policy_text` reads back to an equal policy,
    far faster than YAML (the store keeps it beside each version's YAML text)."""
    return json_text(policy_to_data(policy))


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_SLICE = 2_000  # list items encoded in one call (a few milliseconds)


def json_text(value: Any) -> str:
    """`value` as compact JSON, exactly `json.dumps(value, ensure_ascii=False,
    separators=(",", ":"))`, with long lists encoded a slice at a time: one C call over a
    big policy would hold the GIL (stall an event loop in the process) for its length."""
    encode = _JSON.encode
    if isinstance(value, list):
        if len(value) <= _JSON_SLICE:
            return "[" + ",".join(map(json_text, value)) + "]" if any(
                isinstance(v, dict | list) for v in value) else encode(value)
        return "[" + ",".join(encode(value[i:i + _JSON_SLICE])[1:-1]
                              for i in range(0, len(value), _JSON_SLICE)) + "]"
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return "{" + ",".join(f"{encode(k)}:{json_text(v)}" for k, v in value.items()) + "}"
    return encode(value)
