"""The catalog against the seeds: every table row present, with its protocol and port.

The seeds are read from ../shared/seeds (beside the repository; without it these tests
skip); `seedtables` parses them independently of the catalog code, so an edit on either
side alone fails here.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from egressguard.catalog.model import Catalog, Row, get_catalog
from egressguard.policy.defaults import IMMUTABLE_CALLOUT_ROWS
from tests.catalog.seedtables import NO_SEEDS, SEEDS, SeedRow, read_tables, seed_path

pytestmark = pytest.mark.skipif(not SEEDS.is_dir(), reason=NO_SEEDS)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("*", "").replace("\\", "")).strip()


def _table_rows(catalog: Catalog) -> list[Row]:
    """Catalog rows that come from seed tables (AML's bullet lists are checked separately)."""
    if catalog.name == "aml":
        return list(catalog.section("outbound-servicetag").rows)
    return catalog.rows()


def drift(seed_rows: list[SeedRow], catalog: Catalog) -> list[str]:
    """Every disagreement between the seed's table rows and the catalog, both directions."""
    problems = []
    unmatched = _table_rows(catalog)
    for seed in seed_rows:
        found = [r for r in unmatched if r.section.section == seed.section
                 and r.values() == seed.destinations]
        if not found:
            problems.append(f"seed line {seed.line}: {seed.destinations} under "
                            f"{seed.section!r} is not in catalog {catalog.name}")
            continue
        row = found[0]
        unmatched.remove(row)
        if row.port != seed.port:
            problems.append(f"seed line {seed.line}: {row.id} port {row.port} != {seed.port}")
        if seed.protocol is None:
            if row.protocol_stated:
                problems.append(f"seed line {seed.line}: seed states no protocol, but "
                                f"{row.id} is not marked protocol_stated: false")
        elif row.protocol != seed.protocol:
            problems.append(f"seed line {seed.line}: {row.id} protocol {row.protocol} != "
                            f"{seed.protocol}")
        if seed.use and _clean(seed.use) != row.purpose:
            problems.append(f"seed line {seed.line}: {row.id} purpose differs: "
                            f"{row.purpose!r} != {_clean(seed.use)!r}")
    problems += [f"catalog {catalog.name} row {r.section.id}/{r.id} is in no seed table"
                 for r in unmatched]
    return problems


@pytest.mark.parametrize(("seed", "name"), [("003", "aks"), ("004", "aml")])
def test_every_seed_table_row_is_in_the_catalog_with_its_protocol_and_port(
        seed: str, name: str) -> None:
    rows = read_tables(seed_path(seed))
    assert len(rows) >= (90 if seed == "003" else 3)
    assert drift(rows, get_catalog(name)) == []


def test_a_changed_port_in_the_seed_is_reported_as_drift() -> None:
    rows = read_tables(seed_path("003"))
    changed = [dataclasses.replace(r, port=8443) if r.destinations == ("mcr.microsoft.com",)
               else r for r in rows]
    problems = drift(changed, get_catalog("aks"))
    assert any("port 443 != 8443" in p for p in problems)


def test_a_seed_row_missing_from_the_catalog_is_reported_in_both_directions() -> None:
    rows = read_tables(seed_path("003"))
    renamed = [dataclasses.replace(r, destinations=("nvidia.example",))
               if r.destinations == ("nvidia.github.io",) else r for r in rows]
    problems = drift(renamed, get_catalog("aks"))
    assert any("nvidia.example" in p for p in problems)
    assert any("gpu/nvidia-github-io is in no seed table" in p for p in problems)


def test_every_destination_named_in_seed_004_is_in_the_aml_catalog() -> None:
    """Seed 004's firewall FQDNs and curated-environment targets are bullet lists, not
    tables: every backticked host or tag in its outbound sections must be catalogued."""
    text = seed_path("004").read_text(encoding="utf-8")
    named = set(re.findall(r"^\s*[*-] `([^`]+)`", text, re.MULTILINE))
    catalog = get_catalog("aml")
    values = {v for r in catalog.rows() for v in r.values()}
    assert named, "no bullet destinations found in seed 004"
    assert named - values == set()
    assert "/services/Azure/MachineLearning" in text
    assert catalog.raw["service_endpoint_policy"]["aliases"] == [
        "/services/Azure/MachineLearning"]


def test_data_explorer_entry_references_the_engine_defaults_instead_of_copying_them() -> None:
    catalog = get_catalog("data-explorer")
    assert catalog.raw["immutable_callouts"] == \
        "egressguard.policy.defaults.IMMUTABLE_CALLOUT_ROWS"
    seed = seed_path("000").read_text(encoding="utf-8")
    for _, regex, _ in IMMUTABLE_CALLOUT_ROWS:
        assert regex.replace("\\", "\\\\") in seed


def test_iot_hub_built_in_endpoint_example_comes_from_seed_001() -> None:
    seed = seed_path("001").read_text(encoding="utf-8")
    row = get_catalog("iot-hub").section("built-in-endpoint").rows[0]
    assert row.example in seed
    assert "built-in endpoint FQDN in the allowed FQDN list" in seed
