"""The checkpoint answers repeats from the snapshot's own memo (exact, per snapshot): a
repeated request costs no engine work and is not timed as a decision, a swapped policy is
never answered from the old snapshot's memo, and a suspended checkpoint refuses even what
the memo would allow."""

from __future__ import annotations

import ipaddress

import pytest
from prometheus_client import REGISTRY

from egressguard.enforce.checkpoint import Checkpoint
from egressguard.engine import Kind, Request
from tests.enforce.test_checkpoint import holder

pytestmark = pytest.mark.timeout(30)


def resolved(host: str, address: str) -> Request:
    return Request(kind=Kind.CONNECT, host=host, port=443,
                   addresses=(ipaddress.ip_address(address),),
                   source=ipaddress.ip_address("172.20.0.5"))


def timed() -> float:
    return REGISTRY.get_sample_value("egressguard_decision_seconds_count") or 0.0


def test_a_repeated_request_with_addresses_is_answered_without_engine_work() -> None:
    cp = Checkpoint(holder())
    before = timed()
    first, permitted = cp.decide(resolved("shop.example.com", "93.184.216.34"))
    assert permitted and timed() == before + 1
    again, _ = cp.decide(resolved("shop.example.com", "93.184.216.34"))
    assert again is first and timed() == before + 1
    rebound, permitted = cp.decide(resolved("shop.example.com", "10.0.0.5"))
    assert not permitted and rebound.layer == "guard" and timed() == before + 2


def test_a_swapped_policy_is_not_answered_from_the_old_snapshots_memo() -> None:
    h = holder()
    cp = Checkpoint(h)
    assert cp.decide(resolved("new.org", "93.184.216.34"))[1] is False
    h.swap(holder(extra="allowed_fqdn_list: [new.org]\n").active)
    assert cp.decide(resolved("new.org", "93.184.216.34"))[1] is True
    assert cp.decide_in(h.current, resolved("new.org", "93.184.216.34")).allowed


def test_a_suspended_checkpoint_refuses_what_the_memo_allows() -> None:
    cp = Checkpoint(holder())
    assert cp.decide(resolved("shop.example.com", "93.184.216.34"))[1] is True
    cp.suspend("key unavailable")
    decision, permitted = cp.decide(resolved("shop.example.com", "93.184.216.34"))
    assert not permitted and decision.rule == "suspended"
    cp.resume()
    assert cp.decide(resolved("shop.example.com", "93.184.216.34"))[1] is True


def test_one_decision_noted_under_other_labels_is_counted_under_those() -> None:
    cp = Checkpoint(holder())
    decision, _ = cp.decide(resolved("new.org", "93.184.216.34"))
    assert decision.verdict == "deny"

    def count(kind: str, permitted: str) -> float:
        return REGISTRY.get_sample_value("egressguard_decisions_total", {
            "kind": kind, "verdict": "deny", "layer": decision.layer.value,
            "permitted": permitted}) or 0.0

    before = {(k, p): count(k, p) for k in ("http", "connect") for p in ("true", "false")}
    for kind, permitted in (("http", False), ("http", False), ("http", True),
                            ("connect", False), ("http", False)):
        cp.note(decision, permitted, kind)
    assert count("http", "false") == before[("http", "false")] + 3
    assert count("http", "true") == before[("http", "true")] + 1
    assert count("connect", "false") == before[("connect", "false")] + 1
    assert count("connect", "true") == before[("connect", "true")]
