"""`Guard.from_store`: the library check follows a store cluster live, like the gateway."""

from __future__ import annotations

import time

import pytest

from egressguard.callout import CalloutDenied, Guard
from egressguard.policy import Policy
from egressguard.source import SourceError
from egressguard.store import Store

URL = "https://hooks.example.com/in"
OPEN = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["hooks.example.com"],
              callouts=[{"CalloutType": "webapi", "CalloutUriRegex": r"hooks\.example\.com",
                         "CanCall": True}])


def test_guard_from_store_follows_a_cluster_change_within_one_second(store_url: str
                                                                     ) -> None:
    with Store(store_url) as store:
        store.commit("apps", Policy(restrict_outbound_network_access=True), "op", "closed",
                     create=True)
        with Guard.from_store(store_url, "apps") as guard:
            with pytest.raises(CalloutDenied):
                guard.require("webapi", URL)
            version = store.commit("apps", OPEN, "op", "allow the webhook")
            committed = time.monotonic()
            while not guard.check("webapi", URL).allowed:
                assert time.monotonic() - committed < 1.0, "the change never arrived"
                time.sleep(0.01)
            assert guard.holder.active.version == str(version.number)
            guard.require("webapi", URL)


def test_guard_from_a_store_object_and_unknown_cluster(store_url: str) -> None:
    with Store(store_url) as store:
        with Guard.from_store(store, "default") as guard:  # deny-all default cluster
            assert not guard.check("webapi", URL).allowed
        store.current("default")  # the guard did not close the caller's store
        with pytest.raises(SourceError, match="'nope' not found"):
            Guard.from_store(store, "nope")
