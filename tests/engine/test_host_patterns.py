"""Spec section 3: host patterns in application rules and the allowed FQDN list."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.engine.hostindex import HostIndex
from egressguard.policy import PolicyError, load_policy_text
from egressguard.policy.model import validate_host_pattern
from tests.engine.helpers import connect, snapshot

TABLE = [
    # pattern, matches, does not match
    ("a.b.com", ["a.b.com", "A.B.COM.", "a.b.com."], ["x.a.b.com", "a.b.com.evil.net", "b.com"]),
    ("*.b.com", ["x.b.com", "x.y.b.com"], ["b.com", "evil-b.com", "b.com.evil.net"]),
    (".b.com", ["b.com", "x.b.com", "x.y.b.com"], ["evil-b.com", "b.com.evil.net"]),
    ("md-*.b.com", ["md-12.b.com", "md-.b.com"], ["md-1.x.b.com", "xmd-1.b.com", "b.com"]),
    ("*", ["anything.example", "x.y.z"], []),
]


def _index(pattern: str) -> HostIndex[str]:
    index: HostIndex[str] = HostIndex()
    index.add(validate_host_pattern(pattern), pattern)
    return index


@pytest.mark.parametrize(("pattern", "good", "bad"), TABLE)
def test_pattern_table_in_the_index(pattern: str, good: list[str], bad: list[str]) -> None:
    from egressguard.engine import normalize_host

    index = _index(pattern)
    for host in good:
        assert list(index.matches(normalize_host(host).name)) == [pattern], host
    for host in bad:
        assert list(index.matches(normalize_host(host).name)) == [], host


@pytest.mark.parametrize(("pattern", "good", "bad"), TABLE)
def test_pattern_table_through_an_application_rule(pattern: str, good: list[str],
                                                    bad: list[str]) -> None:
    snap = snapshot(f"""
        restrict_outbound_network_access: true
        application_rule_collections:
          - name: c
            rules: [{{name: r, targets: ['{pattern}'], protocols: ['https:443']}}]
        """)
    for host in good:
        assert connect(snap, host).allowed, host
    for host in bad:
        assert not connect(snap, host).allowed, host


def test_unicode_and_upper_case_patterns_match_their_a_label_form() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        allowed_fqdn_list: ['*.Bücher.DE']
        """)
    assert connect(snap, "shop.xn--bcher-kva.de").allowed
    assert connect(snap, "shop.bücher.de").allowed


@pytest.mark.parametrize(("pattern", "reason"), [
    ("a.*.com", "leftmost"),
    ("*.*.com", "leftmost"),
    ("*", None),  # legal
    ("*.com", None),
    (".*.b.com", "cannot combine"),
    ("*.", "wildcard needs a parent"),
    ("*x", "wildcard needs a parent"),
    ("*.<region>.batch.azure.com", "<region>"),
    ("<location>.dp.example.com", "<location>"),
    ("*.hcp.<cluster-region-name>.azmk8s.io", "<cluster-region-name>"),
    ("a b.com", "invalid host"),
])
def test_pattern_syntax(pattern: str, reason: str | None) -> None:
    if reason is None:
        validate_host_pattern(pattern)
        return
    with pytest.raises(ValueError, match=reason):
        validate_host_pattern(pattern)


def test_unresolved_placeholder_is_a_load_error_naming_the_rule() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text("""
application_rule_collections:
  - name: aml
    rules:
      - name: batch
        targets: ['*.<region>.batch.azure.com']
""", "aml.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 6
    assert "<region>" in problem.reason and "'batch'" in problem.reason
    assert "aml.yaml" in str(caught.value)


LABEL = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
WILD = _index("*.b.com")


@settings(max_examples=500, deadline=None)
@given(prefix=NAME, suffix=NAME)
def test_wildcard_never_matches_lookalike_hosts(prefix: str, suffix: str) -> None:
    # `*.b.com` must not match `evil-b.com`, `b.com.evil.com` or `b.com` itself.
    for host in (f"{prefix}-b.com", f"{prefix}b.com", f"b.com.{suffix}",
                 f"{prefix}.b.com.{suffix}", "b.com"):
        if host.endswith(".b.com"):
            continue
        assert list(WILD.matches(host)) == [], host


@settings(max_examples=300, deadline=None)
@given(prefix=NAME)
def test_wildcard_matches_every_strict_subdomain(prefix: str) -> None:
    assert list(WILD.matches(f"{prefix}.b.com")) == ["*.b.com"]
