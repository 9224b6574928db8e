"""Byte-budget accounting (enforce/budget.py): pure tables, no sockets, no clock."""

from __future__ import annotations

import ipaddress

import pytest

from egressguard.enforce.budget import Ledger
from egressguard.policy.model import Budget

IP = ipaddress.ip_address


def budget(**kw: object) -> Budget:
    fields: dict[str, object] = {"name": "b", "destinations": [".paste.example"],
                                 "max_bytes": 1000, "window": 60}
    fields.update(kw)
    return Budget.model_validate(fields)


def test_a_chunk_that_would_exceed_the_budget_is_refused_and_nothing_more_counts():
    ledger = Ledger([budget()])
    meter, over = ledger.open("paste.example", (), "", now=0)
    assert meter is not None and over is None
    assert meter.charge(600, 0, 1) is None
    assert meter.charge(400, 0, 2) is None          # exactly the budget: fine
    cut = meter.charge(1, 0, 3)
    assert cut is not None and cut.enforced and not cut.refused
    assert cut.used == 1001 and cut.rule == "budget:b"
    assert "exceeded" in cut.reason and "paste.example" in cut.reason
    assert [used for _, used, _ in ledger.usage()] == [1000]


def test_a_used_up_key_refuses_new_connections_until_its_window_resets():
    ledger = Ledger([budget(window=60)])
    meter, _ = ledger.open("paste.example", (), "", now=0)
    assert meter is not None
    assert meter.charge(2000, 0, 1) is not None
    _, over = ledger.open("paste.example", (), "", now=30)
    assert over is not None and over.refused and over.enforced
    assert over.retry_after == pytest.approx(30)
    assert "resets in 30 s" in over.reason
    meter, over = ledger.open("paste.example", (), "", now=60)
    assert over is None and meter is not None
    assert meter.charge(900, 0, 61) is None


def test_concurrent_connections_of_one_key_share_one_allowance():
    ledger = Ledger([budget()])
    first, _ = ledger.open("a.paste.example", (), "", now=0)
    second, _ = ledger.open("a.paste.example", (), "", now=0)
    assert first is not None and second is not None
    assert first.charge(700, 0, 1) is None
    assert second.charge(700, 0, 1) is not None


def test_keys_are_per_destination_and_identity_as_the_budget_says():
    ledger = Ledger([budget(), budget(name="shared", per=[], destinations=["*"],
                                      max_bytes=10_000)])
    a, _ = ledger.open("a.paste.example", (), "ci", now=0)
    b, _ = ledger.open("b.paste.example", (), "ci", now=0)
    c, _ = ledger.open("a.paste.example", (), "web", now=0)
    assert a and b and c
    for meter in (a, b, c):
        assert meter.charge(1000, 0, 1) is None   # each has its own 1000 under "b"
    keys = sorted(k for k, _, _ in ledger.usage())
    assert ("b", "a.paste.example", "ci") in keys and ("b", "a.paste.example", "web") in keys
    assert ("shared", "", "") in keys
    assert dict((k, u) for k, u, _ in ledger.usage())[("shared", "", "")] == 3000


def test_identities_restrict_which_connections_count():
    ledger = Ledger([budget(identities=["ci-runner"])])
    meter, _ = ledger.open("paste.example", (), "web", now=0)
    assert meter is None
    meter, _ = ledger.open("paste.example", (), "", now=0)
    assert meter is None
    meter, _ = ledger.open("paste.example", (), "ci-runner", now=0)
    assert meter is not None


def test_host_patterns_match_as_the_engine_matches_them():
    ledger = Ledger([budget(destinations=["*.example.org", "md-*.blob.example", "x.test"])])
    for host, applies in [("a.example.org", True), ("example.org", False),
                          ("md-1.blob.example", True), ("mdx.blob.example", False),
                          ("x.test", True), ("y.x.test", False), ("evil-example.org", False)]:
        assert bool(ledger.applicable(host, (), "")) is applies, host


def test_cidr_budgets_apply_by_the_addresses_connected_to():
    ledger = Ledger([budget(destinations=["10.1.0.0/16"])])
    assert ledger.applicable("db.internal", (IP("10.1.2.3"),), "")
    assert ledger.applicable("10.1.2.3", (IP("10.1.2.3"),), "")
    assert not ledger.applicable("db.internal", (IP("10.2.0.1"),), "")


def test_direction_chooses_which_bytes_count():
    ledger = Ledger([budget(direction="down"), budget(name="both", direction="both",
                                                      max_bytes=1500)])
    meter, _ = ledger.open("paste.example", (), "", now=0)
    assert meter is not None
    assert meter.charge(5000, 0, 1) is not None   # "both" is crossed by the upload
    meter, _ = Ledger([budget(direction="down")]).open("paste.example", (), "", now=0)
    assert meter is not None
    assert meter.charge(5000, 0, 1) is None       # uploads do not count against "down"
    assert meter.charge(0, 1001, 1) is not None


def test_report_only_budgets_report_once_per_window_and_never_refuse():
    ledger = Ledger([budget(report_only=True, window=10)])
    meter, _ = ledger.open("paste.example", (), "", now=0)
    assert meter is not None
    first = meter.charge(1500, 0, 1)
    assert first is not None and not first.enforced
    assert meter.charge(1500, 0, 2) is None       # once per window
    again, over = ledger.open("paste.example", (), "", now=3)
    assert again is not None and over is not None and not over.enforced
    assert meter.charge(500, 0, 11) is None       # a new window: counted from zero
    second = meter.charge(600, 0, 12)              # crossed again: reported again
    assert second is not None and second.used == 1100


def test_an_unchanged_budget_keeps_its_usage_over_a_policy_swap():
    b = budget()
    ledger = Ledger([b])
    meter, _ = ledger.open("paste.example", (), "", now=0)
    assert meter is not None and meter.charge(1000, 0, 1) is None
    swapped = ledger.rebind([b, budget(name="other")])
    _, over = swapped.open("paste.example", (), "", now=2)
    assert over is not None and over.budget.name == "b"
    changed = swapped.rebind([budget(max_bytes=5000)])
    _, over = changed.open("paste.example", (), "", now=2)
    assert over is None


def test_a_full_key_table_fails_closed_for_new_keys():
    ledger = Ledger([budget(destinations=["*"], window=60)], max_keys=2)
    for host in ("a.test", "b.test"):
        meter, over = ledger.open(host, (), "", now=0)
        assert meter is not None and over is None
    _, over = ledger.open("c.test", (), "", now=1)
    assert over is not None and over.refused          # no room: refused, not fresh
    meter, over = ledger.open("c.test", (), "", now=61)  # the others expired: room again
    assert over is None
