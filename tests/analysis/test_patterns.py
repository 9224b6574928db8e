"""Pattern relations agree with the engine's own matcher (`HostIndex`) and with compiled
policies: whatever the analyser claims about two patterns holds for every host."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.analysis.patterns import (
    attacker_host,
    glob_includes,
    glob_witness,
    matches,
    overlap_witness,
    subsumes,
)
from egressguard.engine import Request, compile_policy
from egressguard.policy import load_policy_text
from egressguard.policy.model import validate_host_pattern

LABELS = ("a", "b", "ab", "ba", "aab")
GLOBS = ("a*", "*b", "a*b", "*a*", "**", "b*a", "*ab")
labels = st.sampled_from(LABELS)
zones = st.lists(labels, min_size=1, max_size=3).map(".".join)
hosts = st.lists(labels, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(("all", "exact", "below", "dot", "glob")))
    zone = draw(zones)
    raw = {"all": "*", "exact": zone, "below": f"*.{zone}", "dot": f".{zone}",
           "glob": f"{draw(st.sampled_from(GLOBS))}.{zone}"}[kind]
    return validate_host_pattern(raw)


def _universe(*pats: str) -> list[str]:
    """Hosts built from the patterns' own labels plus LABELS, up to depth 4."""
    words = set(LABELS)
    for pattern in pats:
        words.update(x for x in pattern.replace("*", "").split(".") if x)
    words.update({"x", "axb", "bba"})
    out = set()
    for depth in range(1, 5):
        for combo in itertools.product(sorted(words), repeat=depth):
            out.add(".".join(combo))
            if len(out) > 2500:
                return sorted(out)
    return sorted(out)


@settings(max_examples=300, deadline=None)
@given(patterns(), patterns(), hosts)
def test_subsumption_claim_holds_for_every_host_per_engine(outer: str, inner: str,
                                                          host: str) -> None:
    if subsumes(outer, inner) and matches(inner, host):
        assert matches(outer, host), (outer, inner, host)


@settings(max_examples=80, deadline=None)
@given(patterns(), patterns())
def test_subsumption_is_sound_and_overlap_complete_on_a_host_universe(a: str, b: str) -> None:
    universe = _universe(a, b)
    in_a = {h for h in universe if matches(a, h)}
    in_b = {h for h in universe if matches(b, h)}
    if subsumes(a, b):
        assert in_b <= in_a
    witness = overlap_witness(a, b)
    if witness is not None:
        assert matches(a, witness) and matches(b, witness)
    elif in_a & in_b:
        raise AssertionError(f"missed overlap of {a} and {b}: {sorted(in_a & in_b)[:3]}")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from((*GLOBS, "a", "ab", "*")), st.sampled_from((*GLOBS, "a", "ab", "*")),
       st.text(alphabet="ab", max_size=6))
def test_glob_relations_agree_with_fnmatch(outer: str, inner: str, label: str) -> None:
    from fnmatch import fnmatchcase

    if glob_includes(outer, inner) and fnmatchcase(label, inner):
        assert fnmatchcase(label, outer)
    witness = glob_witness(outer, inner)
    if witness is not None:
        assert fnmatchcase(witness, outer) and fnmatchcase(witness, inner)
    elif label and fnmatchcase(label, outer) and fnmatchcase(label, inner):
        raise AssertionError(f"missed common label {label!r} of {outer} and {inner}")


@settings(max_examples=60, deadline=None)
@given(patterns(), patterns(), hosts)
def test_a_rule_the_analyser_calls_shadowed_never_decides_in_the_engine(
        first: str, second: str, host: str) -> None:
    from egressguard.analysis import analyze

    policy = load_policy_text(f"""
restrict_outbound_network_access: true
application_rule_collections:
  - name: one
    priority: 100
    rules: [{{name: first, targets: ['{first}']}}]
  - name: two
    priority: 200
    action: deny
    rules: [{{name: second, targets: ['{second}']}}]
""")
    shadowed = any(f.check == "shadowed-rule" and f.rule == "application:two/second"
                   for f in analyze(policy).findings)
    assert shadowed == subsumes(first, second)
    if shadowed:
        decision = compile_policy(policy).decide(Request.from_url(f"https://{host}/"))
        assert decision.rule != "application:two/second"


def test_known_relations() -> None:
    assert subsumes("*.blob.core.windows.net", "evil.blob.core.windows.net")
    assert subsumes("*.core.windows.net", ".blob.core.windows.net")
    assert not subsumes("*.blob.core.windows.net", ".blob.core.windows.net")
    assert subsumes(".b.com", "md-*.b.com") and not subsumes("md-*.b.com", "md-1.x.b.com")
    assert subsumes("md-*.b.com", "md-1*.b.com") and not subsumes("md-1*.b.com", "md-*.b.com")
    assert overlap_witness("*.contoso.com", ".contoso.com") == "exfil0probe.contoso.com"
    assert overlap_witness("a.contoso.com", "*.fabrikam.com") is None


def test_attacker_host_only_for_names_anyone_can_create() -> None:
    def account(label: str) -> bool:
        return label.isalnum() and 3 <= len(label) <= 24

    zone = "blob.core.windows.net"
    assert attacker_host("*.blob.core.windows.net", zone, account) == f"exfil0probe.{zone}"
    assert attacker_host("*.windows.net", zone, account) == f"exfil0probe.{zone}"
    assert attacker_host("st*.blob.core.windows.net", zone, account) == f"stexfil0probe.{zone}"
    assert attacker_host("md-*.blob.core.windows.net", zone, account) is None  # not an account
    assert attacker_host("mystore.blob.core.windows.net", zone, account) is None
    assert attacker_host("*.mystore.blob.core.windows.net", zone, account) is None
