"""Azure service tags: import the downloadable JSON, resolve tag names to prefixes.

The file format is Microsoft's `ServiceTags_<Cloud>_<date>.json`:
`{"changeNumber": n, "cloud": "Public", "values": [{"name": "AzureCloud.westeurope",
"id": ..., "properties": {"region": "westeurope", "systemService": "",
"addressPrefixes": ["13.69.0.0/17", ...]}}]}`. An import is validated completely before the
stored copy is replaced (atomically), so a bad file never loses the previous one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egressguard.errors import InputError
from egressguard.paths import data_home

FILE_NAME = "servicetags.json"


class ServiceTagError(InputError, ValueError):
    """A service-tag file was rejected, or a tag is unknown."""


@dataclass(frozen=True)
class ServiceTag:
    name: str
    region: str
    system_service: str
    prefixes: tuple[str, ...]


class TagMap(Mapping[str, Sequence[str]]):
    """Tag name -> prefixes, looked up case-insensitively (`Storage.WestEurope` works)."""

    def __init__(self, tags: Mapping[str, ServiceTag]) -> None:
        self.tags = dict(tags)
        self._folded = {name.casefold(): tag for name, tag in tags.items()}

    def tag(self, name: str) -> ServiceTag | None:
        return self._folded.get(name.casefold())

    def __getitem__(self, name: str) -> Sequence[str]:
        tag = self.tag(name)
        if tag is None:
            raise KeyError(name)
        return tag.prefixes

    def __iter__(self) -> Iterator[str]:
        return iter(self.tags)

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._folded


def parse(data: Any, source: str = "<service tags>") -> dict[str, ServiceTag]:
    """Validate a decoded service-tag document; raise `ServiceTagError` naming each problem."""
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("values"), list):
        raise ServiceTagError(f"{source}: expected an object with a 'values' list "
                              "(Microsoft's downloadable service-tag JSON)")
    tags: dict[str, ServiceTag] = {}
    seen: set[str] = set()
    for i, value in enumerate(data["values"]):
        where = f"values[{i}]"
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object")
            continue
        name = value.get("name")
        props = value.get("properties")
        if not isinstance(name, str) or not name or not name[0].isupper():
            problems.append(f"{where}.name: expected a tag name such as AzureCloud.westeurope, "
                            f"got {name!r}")
            continue
        where = f"{where} ({name})"
        if not isinstance(props, dict):
            problems.append(f"{where}.properties: expected an object")
            continue
        prefixes = props.get("addressPrefixes")
        if not isinstance(prefixes, list):
            problems.append(f"{where}.properties.addressPrefixes: expected a list")
            continue
        good: list[str] = []
        for prefix in prefixes:
            try:
                good.append(str(ipaddress.ip_network(str(prefix), strict=True)))
            except ValueError as exc:
                problems.append(f"{where}.properties.addressPrefixes: {prefix!r}: {exc}")
        if name.casefold() in seen:
            problems.append(f"{where}: duplicate tag name")
        seen.add(name.casefold())
        tags[name] = ServiceTag(name=name, region=str(props.get("region") or ""),
                                system_service=str(props.get("systemService") or ""),
                                prefixes=tuple(good))
    if problems:
        raise ServiceTagError(f"{source}: {len(problems)} problem(s):\n  "
                              + "\n  ".join(problems[:50]))
    if not tags:
        raise ServiceTagError(f"{source}: the file lists no service tags")
    return tags


def stored_path() -> Path:
    return data_home() / FILE_NAME


def import_file(path: Path) -> tuple[Path, int]:
    """Validate `path` and store it as the service tags in use; return (stored, tag count)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ServiceTagError(f"{path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ServiceTagError(f"{path}: not JSON: {exc}") from None
    tags = parse(data, str(path))
    stored = {
        "changeNumber": data.get("changeNumber"), "cloud": data.get("cloud"),
        "importedFrom": Path(path).name,
        "values": [{"name": t.name, "id": t.name,
                    "properties": {"region": t.region, "systemService": t.system_service,
                                   "addressPrefixes": list(t.prefixes)}}
                   for t in tags.values()],
    }
    target = stored_path()
    fd, tmp = tempfile.mkstemp(prefix=".servicetags-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(stored, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, len(tags)


_cache: tuple[tuple[str, int, int], TagMap] | None = None


def load_stored() -> TagMap:
    """The imported tags (empty if none were imported); cached on the file's mtime."""
    global _cache
    path = stored_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return TagMap({})
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tags = TagMap(parse(data, str(path)))
    except (OSError, json.JSONDecodeError, ServiceTagError):
        # The stored copy is written only after validation, so this is outside damage;
        # failing closed (no tags: rules naming a tag do not compile) is the safe answer.
        tags = TagMap({})
    _cache = (key, tags)
    return tags


def lookup(name: str) -> ServiceTag:
    """One imported tag, or an error saying what is known."""
    tags = load_stored()
    tag = tags.tag(name)
    if tag is not None:
        return tag
    if not len(tags):
        raise ServiceTagError(f"unknown service tag {name!r}: no service tags imported; run "
                              "`egressguard servicetags import ServiceTags_Public_<date>.json`")
    import difflib
    close = difflib.get_close_matches(name, list(tags), n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ServiceTagError(f"unknown service tag {name!r} ({len(tags)} imported){hint}")
