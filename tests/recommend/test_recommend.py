"""The recommender turns recorded traffic into a policy allowing exactly that traffic
(checked with `egressguard check`), broader only where documented (wildcards)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.cli.main import app
from egressguard.policy import load_policy, load_policy_text
from egressguard.recommend import Options, diff, observe, propose, render
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
STORAGE = [f"acct{i}data.blob.core.windows.net" for i in range(6)]


def traffic() -> list[Any]:
    """Recorded events: decisions, closes with bytes, a denial and a report-only denial."""
    evs = []
    for i in range(3):
        evs.append(event(host="api.github.com", port=443, connection_id=f"gh{i}"))
    evs.append(event(host="api.github.com", port=443, phase="close", bytes_up=100,
                     bytes_down=5000, connection_id="gh0"))
    evs.append(event(kind="http", host="mirror.example.org", port=80))
    evs += [event(host=f"a{i}.cdn.example.net") for i in range(5)]           # 5 siblings
    evs += [event(host=f"n{i}.other.example.org") for i in range(4)]         # only 4
    evs += [event(host=h) for h in STORAGE]
    evs.append(event(host="8.8.8.8", port=8443))
    evs.append(event(host="new.example.com", verdict="deny", permitted=True,
                     rule="application:block/new"))
    evs.append(event(host="evil.example.com", verdict="deny", permitted=False))
    evs.append(event(kind="dns", host="lookup.example.io", port=53, protocol="udp"))
    evs.append(event(kind="flow", host="1.1.1.1", port=53, protocol="udp"))
    evs.append(event(kind="callout", host="myserver.database.windows.net", port=None,
                     callout_type="sql"))
    evs.append(event(host="upload.example.com", connection_id="up"))
    evs.append(event(host="upload.example.com", phase="close", bytes_up=300 * 2**20,
                     connection_id="up"))
    evs.append(event(host="internal.corp.example", resolved_address="10.0.0.5"))
    return evs


def check(policy: Path, *args: str, identity: str = "build-agent") -> int:
    """`egressguard check` as the identity the recorded traffic came from."""
    result = runner.invoke(app, ["check", *args, "--policy", str(policy),
                                 "--identity", identity])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code


@pytest.fixture
def recorded(sqlite_url: str, audit_key: bytes) -> str:
    with AuditLog(sqlite_url) as log:
        for e in traffic():
            log.emit(e)
        log.flush()
    return sqlite_url


def test_recommended_policy_allows_exactly_the_observed_traffic(recorded: str,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "policy.yaml"
    result = runner.invoke(app, ["recommend", "--since", "1d", "--store", recorded,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    policy = tmp_path / "policy.yaml"
    load_policy(policy)
    allowed = [
        ("https://api.github.com/",), ("http://mirror.example.org/",),
        *[(f"https://a{i}.cdn.example.net/",) for i in range(5)],
        *[(f"https://n{i}.other.example.org/",) for i in range(4)],
        *[(f"https://{h}/",) for h in STORAGE],
        ("8.8.8.8:8443", "--kind", "connect"),
        ("https://new.example.com/",),                    # report-only would-deny
        ("lookup.example.io", "--kind", "dns"),
        ("https://myserver.database.windows.net", "--type", "sql"),
        ("https://upload.example.com/",),
        ("https://internal.corp.example/", "--address", "10.0.0.5"),
    ]
    for args in allowed:
        assert check(policy, *args) == 0, args
    denied = [
        ("https://evil.example.com/",),                   # enforced denial: not proposed
        ("http://api.github.com/",),                      # only https:443 was seen
        ("https://api.github.com:8443/",),
        ("https://github.com/",),                         # no parent domain
        ("https://n9.other.example.org/",),               # 4 siblings: no wildcard
        ("https://cdn.example.net/",),                    # *.x never matches x itself
        ("https://stranger.blob.core.windows.net/",),     # accounts are never wildcarded
        ("8.8.4.4:8443", "--kind", "connect"),
        ("8.8.8.8:8444", "--kind", "connect"),
        ("1.1.1.1:53", "--kind", "flow"),                 # a TCP flow: only UDP was seen
        ("https://myserver.database.windows.net.evil.com", "--type", "sql"),
        ("https://myserver.database.windows.net", "--type", "kusto"),
        ("https://internal.corp.example/", "--address", "10.0.0.6"),
    ]
    for args in denied:
        assert check(policy, *args) == 1, args
    assert check(policy, "1.1.1.1:53", "--kind", "flow", "--protocol", "udp") == 0
    assert check(policy, "1.1.1.1:54", "--kind", "flow", "--protocol", "udp") == 1
    # Documented breadth: a wildcard (5 siblings) also allows unseen siblings.
    assert check(policy, "https://a99.cdn.example.net/") == 0


def test_comments_carry_counts_bytes_and_risks(recorded: str, audit_key: bytes) -> None:
    from egressguard.audit.crypto import Sealer, load_or_create_key
    from egressguard.audit.db import make_engine
    from egressguard.audit.query import Filter, scan

    engine = make_engine(recorded)
    seen = observe(scan(engine, Filter(), sealer=Sealer(load_or_create_key())))
    engine.dispose()
    text = render(propose(seen), seen, "default")
    load_policy_text(text, "t")
    block = text.split('"api-github-com"')[0].rsplit("rules:", 1)[-1]
    assert "# 3 calls, 100 B up, 4.9 KiB down" in text
    assert "RISK: storage account" in text and text.count("RISK: storage account") == 6
    assert "RISK: wildcard: 5 names under cdn.example.net" in text
    assert "RISK: raw IP address: allowed for IP literals and flows" in text
    assert "RISK: raw IP address (private)" in text
    assert "RISK: high upload volume: 314572800 bytes sent" in text
    assert "note: report-only: would have been denied by application:block/new" in text
    assert "note: only DNS lookups were seen" in text
    assert "evil.example.com" not in text
    assert block is not None


def test_diff_against_the_policy_in_force(tmp_path: Path) -> None:
    current = load_policy_text(json.dumps({
        "restrict_outbound_network_access": True,
        "application_rule_collections": [{"name": "apps", "priority": 200, "rules": [
            {"name": "github", "targets": ["api.github.com"], "protocols": ["https:443"]},
            {"name": "unused", "targets": ["old.example.com"]}]}]}), "current")
    evs = [event(host="api.github.com").as_dict(), event(host="new.example.com").as_dict()]
    for record in evs:
        record["verdict"], record["permitted"] = "allow", True
    seen = observe(evs)
    text = diff(current, propose(seen), seen)
    assert ("= connect api.github.com:443 as build-agent: already allowed by "
            "application:apps/github") in text
    assert ("+ connect new.example.com:443 as build-agent: newly allowed (in force: denied "
            "by default)") in text
    assert "- application:apps/unused: no observed call used it (dropped)" in text


def test_cli_diff_reads_the_store_and_bad_input_is_exit_2(recorded: str) -> None:
    result = runner.invoke(app, ["recommend", "--since", "1d", "--store", recorded,
                                 "--diff", "--cluster", "default"])
    assert result.exit_code == 0, result.output
    assert "+ connect api.github.com:443 as build-agent: newly allowed" in result.output
    bad = runner.invoke(app, ["recommend", "--since", "a while", "--store", recorded])
    assert bad.exit_code == 2 and "invalid time" in bad.output


def test_wildcard_threshold_is_configurable() -> None:
    records = [event(host=f"h{i}.svc.example.com").as_dict() for i in range(3)]
    exact = propose(observe(records), Options(wildcard_min=5))
    wild = propose(observe(records), Options(wildcard_min=3))
    assert [p.targets for p in exact] == [[f"h{i}.svc.example.com"] for i in range(3)]
    assert [p.targets for p in wild] == [["*.svc.example.com"]]
    # Never a wildcard over a public suffix, however many names.
    many = [event(host=f"site{i}.co.uk").as_dict() for i in range(9)]
    assert all(not p.targets[0].startswith("*") for p in propose(observe(many)))
    assert time.time() > 0


def test_a_name_longer_than_a_rule_name_gets_a_bounded_distinct_rule_name() -> None:
    from egressguard.policy.model import MAX_NAME
    from egressguard.recommend.build import _rule_name

    a, b = ("x" * 60 + "." + "a" * 60 + "." + "b" * 60 + f".{tld}" for tld in ("one", "two"))
    assert len(_rule_name(a)) == MAX_NAME and _rule_name(a) != _rule_name(b)
    assert _rule_name("api.example.com") == "api-example-com"
