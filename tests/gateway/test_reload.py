"""Hot reload: a changed file applies to new requests; a bad file changes nothing."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.gateway.conftest import CLOSED_POLICY

pytestmark = pytest.mark.timeout(30)


def _wait_version_change(gw, old: str, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while gw.holder.active.version == old and time.monotonic() < end:
        time.sleep(0.05)


def test_changed_policy_file_applies_to_new_requests(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    url = f"http://up.test:{upstream.port}/"
    assert httpx.get(url, proxy=gw.url).status_code == 200
    old = gw.holder.active.version
    gw.policy_path.write_text(CLOSED_POLICY)
    _wait_version_change(gw, old)
    assert httpx.get(url, proxy=gw.url).status_code == 403


def test_bad_policy_file_is_rejected_and_the_running_policy_stays(gateway_factory, upstream,
                                                                  caplog):
    caplog.set_level(logging.ERROR, logger="egressguard.gateway")
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    old = gw.holder.active.version
    gw.policy_path.write_text("restrict_outbound_network_access: maybe\nnot: [valid\n")
    time.sleep(0.8)
    assert gw.holder.active.version == old
    assert httpx.get(f"http://up.test:{upstream.port}/", proxy=gw.url).status_code == 200
    assert any("policy reload rejected" in r.getMessage() for r in caplog.records)


def test_policy_with_unknown_rule_field_is_rejected_with_reason(gateway_factory, caplog):
    caplog.set_level(logging.ERROR, logger="egressguard.gateway")
    gw = gateway_factory()
    old = gw.holder.active.version
    gw.policy_path.write_text("restrict_outbound_network_access: true\nallowed_fqdn_list: "
                              "['<region>.example.com']\n")
    time.sleep(0.8)
    assert gw.holder.active.version == old
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "allowed_fqdn_list" in message
