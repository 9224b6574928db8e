"""`export --format yaml` and the loader are a lossless pair."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.export.policyfile import export_yaml
from egressguard.policy import load_policy_text
from tests.export.policies import random_policy


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False))
def test_yaml_export_loads_back_to_the_same_policy(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    exported = export_yaml(policy, source="test")
    assert exported.warnings == ()
    assert load_policy_text(exported.text) == policy
    assert exported.text.startswith("# egressguard export --format yaml (policy: test)")
