"""The failed-credential limiter without I/O: the window, the bound on memory, what a
source and a name are counted as."""

from __future__ import annotations

import ipaddress

from egressguard.identity.throttle import NAME_BUCKETS, Failures, name_key, source_key


def test_a_key_is_blocked_after_its_limit_until_its_window_ends() -> None:
    failures = Failures(limit=3, window=60.0)
    for t in (0.0, 1.0):
        failures.failed("a", t)
    assert failures.blocked("a", 2.0) is None  # two of three
    failures.failed("a", 2.0)
    assert failures.blocked("a", 30.0) == 30.0  # the window started at the first failure
    assert failures.blocked("b", 30.0) is None
    assert failures.blocked("a", 60.0) is None  # over: counted afresh
    failures.failed("a", 61.0)
    assert failures.blocked("a", 61.0) is None


def test_an_attacker_cycling_sources_cannot_grow_the_table_past_its_cap() -> None:
    failures = Failures(limit=1, window=60.0, cap=100)
    for i in range(10_000):
        failures.failed(ipaddress.ip_address(f"10.{i >> 8 & 255}.{i & 255}.1"), 1.0)
    assert len(failures) == 100
    # The most recent failures are the ones kept.
    assert failures.blocked(ipaddress.ip_address("10.39.15.1"), 2.0) is not None


def test_an_ipv6_host_is_counted_by_its_64_and_ipv4_by_its_address() -> None:
    a, b = ipaddress.ip_address("2001:db8:1:2::1"), ipaddress.ip_address("2001:db8:1:2::ff")
    assert source_key(a) == source_key(b) != source_key(ipaddress.ip_address("2001:db8:1:3::1"))
    v4 = ipaddress.ip_address("192.0.2.1")
    assert source_key(v4) == v4 != source_key(ipaddress.ip_address("192.0.2.2"))


def test_names_share_a_bounded_number_of_counters() -> None:
    keys = {name_key(f"guess{i}") for i in range(20_000)}
    assert keys <= set(range(NAME_BUCKETS)) and len(keys) <= NAME_BUCKETS
    assert name_key("web") == name_key("web")
