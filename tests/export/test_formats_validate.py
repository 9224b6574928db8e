"""Every exporter's output is valid for its target (schemas in `schemas/`, written from the
documented resource shapes) for random policies, and says what it could not express."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.export.azure import export_azure
from egressguard.export.cilium import export_cilium
from egressguard.export.kubernetes import export_kubernetes
from tests.export.policies import REFS, random_policy

SCHEMAS = Path(__file__).parent / "schemas"


def _schema(name: str) -> Any:
    """A validator (jsonschema_rs, which the dev dependencies already bring in)."""
    return jsonschema_rs.validator_for(json.loads((SCHEMAS / name).read_text()),
                                       validate_formats=True)


AZURE = _schema("azure-rule-collection-group.json")
CILIUM = _schema("cilium-policy.json")
KUBERNETES = _schema("kubernetes-networkpolicy.json")


def _validate(validator: Any, doc: Any, text: str) -> None:
    errors = list(validator.iter_errors(doc))
    assert not errors, f"{errors[0].message} at {list(errors[0].instance_path)}\n{text}"


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False))
def test_azure_export_is_a_valid_rule_collection_group(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    exported = export_azure(policy, REFS)
    doc = json.loads(exported.text)
    _validate(AZURE, doc, exported.text)
    collections = doc["resources"][0]["properties"]["ruleCollections"]
    priorities = [c["priority"] for c in collections]
    assert priorities == sorted(set(priorities)), "priorities must order the collections"
    assert len({c["name"] for c in collections}) == len(collections)
    assert doc["metadata"]["notExpressible"] == list(exported.warnings)


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False), st.booleans())
def test_cilium_export_is_valid_cilium_policy(rnd: random.Random, namespaced: bool) -> None:
    policy = random_policy(rnd)
    exported = export_cilium(policy, REFS, namespace="apps" if namespaced else None,
                             identities={"10.1.0.0/16": {"app": "batch"}})
    docs = list(yaml.load_all(exported.text, Loader=yaml.CSafeLoader))
    assert docs
    for doc in docs:
        _validate(CILIUM, doc, exported.text)
    for warning in exported.warnings:
        assert f"#   - {warning}" in exported.text


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False))
def test_kubernetes_export_is_valid_networkpolicy(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    exported = export_kubernetes(policy, REFS, namespace="apps",
                                 identities={"10.1.0.0/16": {"app": "batch"}},
                                 gateway=[("10.0.0.10", 3128)], dns=[("10.0.0.10", 53)])
    for doc in yaml.load_all(exported.text, Loader=yaml.CSafeLoader):
        _validate(KUBERNETES, doc, exported.text)
    for warning in exported.warnings:
        assert f"#   - {warning}" in exported.text
