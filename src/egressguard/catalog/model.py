"""The catalog data model: sections of requirement rows, loaded from the package's YAML.

Pure data and lookups; no placeholder filling here (see `profile`). Loading is cached: the
files ship inside the package and never change while a process runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from egressguard.errors import InputError

CLOUDS = ("public", "china", "usgov")
_CATALOG_FILES = ("aks.yaml", "aml.yaml", "data-explorer.yaml", "iot-hub.yaml")


class CatalogError(InputError, ValueError):
    """Bad input to a catalog operation (unknown name, cloud, region, feature...)."""


@dataclass(frozen=True)
class Destination:
    """One network-rule alternative (`form` says how to fill it) or one application target."""

    form: str   # any, service_tag, region_cidrs, api_server_ip, custom_dns_ip, fqdn
    value: str
    note: str = ""


@dataclass(frozen=True)
class Row:
    id: str
    section: Section = field(repr=False, compare=False)
    protocol: str              # UDP, TCP, ANY (network) or HTTPS, HTTP (application)
    port: int
    purpose: str
    destinations: tuple[Destination, ...] = ()       # network rows: alternatives
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # cloud -> hosts
    clouds: tuple[str, ...] = ()
    protocol_stated: bool = True
    condition: str = ""
    only_if: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    caveat: str = ""
    example: str = ""

    def targets_for(self, cloud: str) -> tuple[str, ...]:
        return self.targets.get(cloud, ())

    def values(self) -> tuple[str, ...]:
        """Every destination text of the row, all clouds (for comparison with the seed)."""
        out = [d.value for d in self.destinations]
        for hosts in self.targets.values():
            out.extend(h for h in hosts if h not in out)
        return tuple(out)


@dataclass(frozen=True)
class Section:
    id: str
    section: str         # the seed's heading chain, verbatim
    feature: str
    clouds: tuple[str, ...]
    kind: str            # network, application, allowed_fqdn
    rows: tuple[Row, ...] = field(default=(), compare=False)
    note: str = ""
    mode: str = ""       # aml: servicetag / firewall ("" = both)
    tab: str = ""


@dataclass(frozen=True)
class Catalog:
    name: str
    title: str
    source: str
    clouds: tuple[str, ...]
    features: dict[str, dict[str, str]]
    sections: tuple[Section, ...]
    fqdn_tags: dict[str, dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def rows(self) -> list[Row]:
        return [row for section in self.sections for row in section.rows]

    def section(self, section_id: str) -> Section:
        for section in self.sections:
            if section.id == section_id:
                return section
        raise KeyError(section_id)


def _read(name: str) -> dict[str, Any]:
    text = resources.files("egressguard.catalog").joinpath("data", name).read_text("utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise RuntimeError(f"catalog file {name} is not a mapping")
    return data


def _row(raw: dict[str, Any], section: Section) -> Row:
    targets: dict[str, tuple[str, ...]] = {}
    raw_targets = raw.get("targets")
    row_clouds = tuple(raw.get("clouds", section.clouds))
    if isinstance(raw_targets, dict):
        targets = {cloud: tuple(hosts) for cloud, hosts in raw_targets.items()}
    elif raw_targets:
        targets = {cloud: tuple(raw_targets) for cloud in row_clouds}
    return Row(
        id=raw["id"], section=section, protocol=str(raw["protocol"]).upper(),
        port=int(raw["port"]), purpose=raw.get("purpose", ""),
        destinations=tuple(Destination(**d) for d in raw.get("destinations", ())),
        targets=targets, clouds=tuple(targets) if targets else row_clouds,
        protocol_stated=raw.get("protocol_stated", True),
        condition=raw.get("condition", ""), only_if=tuple(raw.get("only_if", ())),
        unless=tuple(raw.get("unless", ())), caveat=raw.get("caveat", ""),
        example=raw.get("example", ""))


def _catalog(data: dict[str, Any]) -> Catalog:
    sections = []
    for raw in data.get("sections", ()):
        section = Section(id=raw["id"], section=raw["section"], feature=raw["feature"],
                          clouds=tuple(raw["clouds"]), kind=raw["kind"],
                          note=raw.get("note", ""), mode=raw.get("mode", ""),
                          tab=raw.get("tab", ""))
        rows = tuple(_row(r, section) for r in raw["rows"])
        object.__setattr__(section, "rows", rows)
        sections.append(section)
    return Catalog(name=data["catalog"], title=data["title"], source=data["source"],
                   clouds=tuple(data.get("clouds", CLOUDS)),
                   features=data.get("features", {}), sections=tuple(sections),
                   fqdn_tags=data.get("fqdn_tags", {}), raw=data)


@functools.cache
def catalogs() -> dict[str, Catalog]:
    """Every shipped catalog by name."""
    loaded = [_catalog(_read(name)) for name in _CATALOG_FILES]
    return {c.name: c for c in loaded}


def get_catalog(name: str) -> Catalog:
    found = catalogs().get(name)
    if found is None:
        raise CatalogError(f"unknown catalog {name!r}; choose one of: "
                           f"{', '.join(sorted(catalogs()))}")
    return found


@functools.cache
def regions() -> dict[str, tuple[str, ...]]:
    """Azure region names per cloud (hand-compiled data, not from the seeds)."""
    return {cloud: tuple(names) for cloud, names in _read("regions.yaml").items()}


def check_cloud(cloud: str, allowed: tuple[str, ...] = CLOUDS) -> str:
    if cloud not in allowed:
        raise CatalogError(f"unknown cloud {cloud!r}; choose one of: {', '.join(allowed)}")
    return cloud


def check_region(cloud: str, region: str) -> str:
    """The canonical region name, or an error listing the cloud's regions."""
    canonical = region.strip().lower().replace(" ", "")
    if canonical not in regions()[cloud]:
        raise CatalogError(f"unknown region {region!r} for cloud {cloud}; choose one of: "
                           f"{', '.join(regions()[cloud])}")
    return canonical


@functools.cache
def shipped_storage_aliases() -> dict[str, dict[str, Any]]:
    return dict(_read("storage-aliases.yaml"))
