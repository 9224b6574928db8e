"""Where the policy in force comes from: a file, else a store cluster, else the store's
default cluster when a store exists, else `DENY_ALL`; followed live or read once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from egressguard.engine import CompileError, Request, compile_policy
from egressguard.policy import Policy, load_policy_text
from egressguard.source import (
    DENY_ALL,
    UNRESTRICTED,
    SourceError,
    active_in_force,
    follow,
    policy_in_force,
    snapshot_for,
)
from egressguard.store import Store

PROBE = Request.from_url("https://probe.example.com/")
OPEN = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["probe.example.com"])
AKS = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: aks
    priority: 200
    rules:
      - {name: aks, fqdn_tags: [AzureKubernetesService], protocols: ['https:443']}
"""


@pytest.fixture
def no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("EGRESSGUARD_STORE", raising=False)
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_the_two_defaults_are_named_and_mean_what_they_say() -> None:
    assert snapshot_for(UNRESTRICTED).decide(PROBE).allowed
    assert not snapshot_for(DENY_ALL).decide(PROBE).allowed


def test_without_file_or_store_the_policy_in_force_is_deny_all_and_nothing_is_created(
        no_store: Path) -> None:
    policy, label = policy_in_force()
    assert policy is DENY_ALL and label == "built-in deny-all policy"
    live = follow()
    assert live.mode == "builtin" and not live.holder.current.decide(PROBE).allowed
    assert not (no_store / "egressguard.db").exists()  # never created just to read


def test_a_file_wins_over_the_store(tmp_path: Path, store_url: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("restrict_outbound_network_access: false\n")
    policy, label = policy_in_force(path, None, store_url)
    assert label == str(path) and not policy.restrict_outbound_network_access


def test_the_store_cluster_is_the_policy_in_force(store_url: str) -> None:
    with Store(store_url) as store:
        store.commit("prod", OPEN, "op", "create", create=True)
        active = active_in_force(None, "prod", store)
        assert (active.version, active.source) == ("1", "cluster prod version 1")
        assert active.snapshot.decide(PROBE).allowed
        with pytest.raises(SourceError, match="'nope' not found"):
            policy_in_force(None, "nope", store)


def test_follow_puts_a_store_commit_in_force(store_url: str) -> None:
    live = follow(None, "default", store_url)
    try:
        assert live.mode == "store" and not live.holder.current.decide(PROBE).allowed
        with Store(store_url) as store:
            store.commit("default", OPEN, "op", "open")
        deadline = time.monotonic() + 3
        while not live.holder.current.decide(PROBE).allowed:
            assert time.monotonic() < deadline, "the commit never arrived"
            time.sleep(0.02)
    finally:
        live.stop()


def test_follow_reloads_the_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("restrict_outbound_network_access: true\n")
    with follow(path, interval=60) as live:
        assert live.mode == "file" and not live.holder.current.decide(PROBE).allowed
        path.write_text("restrict_outbound_network_access: true\n"
                        "allowed_fqdn_list: [probe.example.com]\n")
        assert live.reload() and live.holder.current.decide(PROBE).allowed
        path.write_text("restrict_outbound_network_access: [not, a, bool]\n")
        assert not live.reload() and live.holder.current.decide(PROBE).allowed


def test_bad_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        follow(tmp_path / "missing.yaml")
    with pytest.raises(SourceError):
        policy_in_force(tmp_path / "missing.yaml")


def test_one_compile_entry_attaches_the_catalog_references() -> None:
    policy = load_policy_text(AKS, "aks")
    with pytest.raises(CompileError):
        compile_policy(policy)  # what recommend --diff used to do
    assert snapshot_for(policy).decide(Request.from_url("https://mcr.microsoft.com/")).allowed
