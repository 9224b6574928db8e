"""The overview and version pages: the numbers match the log and the store, panels follow
roles, and hostile values from the log or the store are shown escaped, never run."""

from __future__ import annotations

from collections import Counter

import pytest

from egressguard.analysis import analyze
from egressguard.audit.query import outcome_of
from egressguard.catalog import references
from egressguard.web.html import SCRIPTS
from tests.web.conftest import HOSTILE, Env, Sections, event

pytestmark = pytest.mark.timeout(60)

POLICY_PANELS = ("policy", "findings", "history")
DECISION_PANELS = ("decisions", "live", "denied")
AUDIT_PANELS = ("exfiltration", "identities", "denials")


def overview(env: Env, role: str, **params: str) -> Sections:
    response = env.client.get("/dashboard", params=params, headers=env.headers(role))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Sections(response.text)


def test_decision_counts_match_the_last_hour_of_the_log(env: Env) -> None:
    page = overview(env, "auditor")
    expected = Counter((outcome_of(e.verdict, e.permitted), e.layer) for e in env.events
                       if e.cluster == "default" and e.phase == "decision"
                       and e.time >= env.now - 3600)
    shown = {(o, layer): int(n) for o, layer, n in page.rows["decisions"][1:]}
    assert shown == dict(expected)
    assert sum(shown.values()) == 16
    assert "16 decisions in the last 1h" in page.text["decisions"]
    assert "allow: 10" in page.text["decisions"] and "would-deny: 1" in page.text["decisions"]


def test_top_destinations_sum_bytes_sent_per_host_in_the_window(env: Env) -> None:
    rows = overview(env, "admin").rows["exfiltration"][1:]
    assert rows == [["big.blob.core.windows.net", "10,000,000", "2,000", "2"],
                    ["api.example.com", "2,048", "900,000", "1"]]


def test_a_longer_window_includes_older_traffic(env: Env) -> None:
    rows = overview(env, "admin", window="3h").rows["exfiltration"][1:]
    assert rows[0] == ["old.blob.core.windows.net", "9,999,999,999", "0", "1"]


def test_recent_denials_are_newest_first_with_reasons(env: Env) -> None:
    rows = overview(env, "auditor").rows["denials"][1:]
    denied = sorted((e for e in env.events if e.cluster == "default"
                     and e.phase == "decision" and e.verdict == "deny"),
                    key=lambda e: -e.time)
    assert [r[1] for r in rows] == [e.host for e in denied]
    first = rows[0]
    assert first[1:] == [f"{HOSTILE}.evil.net", "8443", "deny", "application",
                         f"application:{HOSTILE}", "2",
                         f"<img src=x onerror=alert(2)> {HOSTILE}"]
    assert rows[1][1:4] == ["y.evil.net", "443", "would-deny"]


def test_policy_panel_describes_the_version_in_force(env: Env) -> None:
    page = overview(env, "viewer")
    facts = dict(page.rows["policy"])
    assert facts["Version"] == "2"
    assert facts["Restricted outbound access"] == "yes"
    assert facts["Application rules"] == "2 in 1 collections"
    assert facts["Network rules"] == "1 in 1 collections"
    assert facts["Allowed FQDNs"] == "2"
    assert "*.blob.core.windows.net" in page.text["policy"]


def test_findings_are_the_analysers(env: Env) -> None:
    report = analyze(env.store.current("default").policy, references())
    assert report.findings
    rows = overview(env, "operator").rows["findings"][1:]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (f.severity.label, f.check, f.rule) for f in report.findings]


def test_history_links_to_each_version_and_its_diff(env: Env) -> None:
    response = env.client.get("/dashboard", headers=env.headers("viewer"))
    assert 'href="/dashboard/versions/2?cluster=default"' in response.text
    assert 'href="/dashboard/versions/1?cluster=default"' in response.text
    page = env.client.get("/dashboard/versions/2", params={"cluster": "default"},
                          headers=env.headers("viewer"))
    assert page.status_code == 200
    sections = Sections(page.text)
    assert "+- '*.blob.core.windows.net'" in sections.text["diff"]
    assert "restrict_outbound_network_access: true" in sections.text["policy-text"]


@pytest.mark.parametrize(("role", "policy", "decisions", "audit"), [
    ("admin", True, True, True), ("operator", True, True, False),
    ("viewer", True, False, False), ("auditor", False, True, True)])
def test_panels_follow_the_role(env: Env, role: str, policy: bool, decisions: bool,
                                audit: bool) -> None:
    page = overview(env, role)
    for ident in POLICY_PANELS:
        assert (ident in page.rows) is policy, ident
    for ident in DECISION_PANELS:
        assert (ident in page.rows) is decisions, ident
    for ident in AUDIT_PANELS:
        assert (ident in page.rows) is audit, ident
    refused = page.source.count("Not permitted: role")
    assert refused == 3 * (not policy) + (not decisions) + 3 * (not audit)


def record_two_identities(env: Env) -> None:
    """billing: 3 allowed, 1 denied, 2 closed connections; batch-job: 1 allowed, 2 would
    have been denied, 1 short exchange (decision and close in one record); one of each
    outside the window, and one in another cluster."""
    t = env.now - 15
    for i in range(3):
        env.log.emit(event(time=t - i, host="pay.example.com", client_identity="billing"))
    env.log.emit(event(time=t, host="x.evil.net", verdict="deny", permitted=False,
                       layer="default", rule="default:deny", client_identity="billing"))
    for i, (up, down) in enumerate(((1_000, 50_000), (234, 7))):
        env.log.emit(event(time=t, phase="close", host="pay.example.com", bytes_up=up,
                           bytes_down=down, connection_id=f"bill{i}",
                           client_identity="billing"))
    env.log.emit(event(time=t, phase="exchange", host="api.example.com", bytes_up=300,
                       bytes_down=4_000, connection_id="job0", client_identity="batch-job"))
    for _ in range(2):
        env.log.emit(event(time=t, host="y.evil.net", verdict="deny", permitted=True,
                           layer="default", rule="default:deny",
                           client_identity="batch-job"))
    env.log.emit(event(time=env.now - 7200, host="old.example.com",
                       client_identity="billing"))
    env.log.emit(event(time=t, cluster="other", host="o.example.com",
                       client_identity="batch-job"))
    env.log.flush()


def test_decisions_and_bytes_are_shown_per_identity(store_env: Env) -> None:
    record_two_identities(store_env)
    rows = overview(store_env, "auditor").rows["identities"]
    assert rows[0] == ["Identity", "Allowed", "Denied", "Would deny", "Bytes up",
                       "Bytes down", "Connections"]
    assert rows[1:] == [
        ["(anonymous)", "10", "5", "1", "10,002,048", "902,000", "3"],
        ["billing", "3", "1", "0", "1,234", "50,007", "2"],
        ["batch-job", "1", "0", "2", "300", "4,000", "1"]]


def test_a_busy_window_counts_only_its_newest_records_and_says_so(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sealed identity is opened in Python, so the panel is bounded by rows."""
    from egressguard.web import data

    record_two_identities(env)
    monkeypatch.setattr(data, "IDENTITY_ROWS", 5)
    page = overview(env, "auditor")
    counted = sum(int(n) for r in page.rows["identities"][1:] for n in r[1:4])
    assert 0 < counted <= 5
    assert "Only the newest records of this window are counted" in page.text["identities"]


def test_the_identity_panel_and_filter_are_for_auditors_only(env: Env) -> None:
    """The identity is sealed: an operator sees decisions but neither who made them nor
    a filter that would reveal it."""
    record_two_identities(env)
    page = overview(env, "operator")
    assert "identities" not in page.rows and "billing" not in page.source
    assert 'name="identity"' not in page.source
    refused = env.client.get("/dashboard", params={"identity": "billing"},
                             headers=env.headers("operator"))
    assert refused.status_code == 403
    live = env.client.get("/dashboard/live", params={"identity": "billing"},
                          headers=env.headers("operator"))
    assert live.status_code == 403


def test_the_live_list_shows_and_filters_by_identity(env: Env) -> None:
    record_two_identities(env)
    rows = overview(env, "admin", identity="billing").rows["live"][1:]
    assert len(rows) == 4
    assert {r[6] for r in rows} == {"billing"}
    assert sorted(r[3] for r in rows) == ["allow", "allow", "allow", "deny"]
    anonymous = overview(env, "admin", identity="(anonymous)").rows["live"][1:]
    assert anonymous and {r[6] for r in anonymous} == {"(anonymous)"}
    everyone = overview(env, "auditor").rows["live"][1:]
    assert {"billing", "batch-job", "(anonymous)"} <= {r[6] for r in everyone}
    bad = env.client.get("/dashboard", params={"identity": "<b>x"},
                         headers=env.headers("admin"))
    assert bad.status_code == 400 and "invalid identity filter" in bad.text


def test_auditor_cannot_read_a_version(env: Env) -> None:
    response = env.client.get("/dashboard/versions/1", headers=env.headers("auditor"))
    assert response.status_code == 403
    assert "restrict_outbound" not in response.text


def test_hostile_values_from_log_and_store_are_escaped(env: Env) -> None:
    """Attack: a client makes the gateway log a host or reason holding markup, or an
    operator commits a summary holding it, hoping a reader's browser runs it."""
    hostile_name = env.store.create_token(HOSTILE, "admin", "test")[0]
    env.tokens["hostile"] = hostile_name
    for role in ("hostile", "auditor", "viewer"):
        text = env.client.get("/dashboard", headers=env.headers(role)).text
        assert text.count("<script") == 2  # only the dashboard's own files
        text = text.replace(SCRIPTS, "")
        assert "<script" not in text and "<img" not in text and "<b>" not in text
        assert "&lt;script&gt;" in text
    version = env.client.get("/dashboard/versions/2", headers=env.headers("hostile")).text
    assert "<script" not in version and "&lt;b&gt;&lt;script&gt;" in version
    assert f"{HOSTILE} (admin)" in Sections(version).source.replace("&lt;", "<").replace(
        "&gt;", ">")


def test_pages_forbid_scripts_and_framing(env: Env) -> None:
    response = env.client.get("/dashboard", headers=env.headers("admin"))
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self';" in csp and "unsafe" not in csp  # own files, no inline
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    css = env.client.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_bad_parameters_get_a_clear_error(env: Env) -> None:
    h = env.headers("admin")
    get = env.client.get
    assert get("/dashboard", params={"cluster": "Bad_Name!"}, headers=h).status_code == 400
    missing = get("/dashboard", params={"cluster": "nope"}, headers=h)
    assert missing.status_code == 404 and "default" in missing.text
    assert get("/dashboard", params={"window": "soon"}, headers=h).status_code == 400
    assert get("/dashboard", params={"window": "90d"}, headers=h).status_code == 400
    assert get("/dashboard/versions/9", headers=h).status_code == 404


def test_an_auditor_sees_the_log_of_a_cluster_the_store_does_not_hold(env: Env) -> None:
    page = overview(env, "auditor", cluster="other")
    assert page.rows["exfiltration"][1:] == [["other.example.com", "8,888,888,888", "0", "1"]]


def test_dashboard_is_not_part_of_the_api_document(env: Env) -> None:
    paths = env.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_process_panel_shows_exfiltration_warnings_to_auditors_only(env: Env) -> None:
    from egressguard.audit import metrics

    host = f"{HOSTILE}.warned.example"
    metrics.EXFIL_WARNINGS.labels(host).inc(3)
    auditor = overview(env, "auditor")
    assert [host, "3"] in auditor.rows["process"]
    viewer = overview(env, "viewer")
    assert "warned.example" not in viewer.source
    assert "exfiltration warnings (destinations: auditor or admin)" in viewer.text["process"]
    assert "<script" not in auditor.source.replace(SCRIPTS, "")


def test_a_report_only_gateway_shows_report_only_yes(env: Env) -> None:
    env.client.app.state.gateway_report_only = True  # type: ignore[attr-defined]
    page = overview(env, "viewer")
    assert ["Report-only", "yes (the gateway runs with --report-only: nothing is blocked)"] \
        in page.rows["policy"]
    assert "Report-only: yes." in page.source


def test_static_files_are_the_packaged_ones_and_nothing_else(env: Env) -> None:
    js = env.client.get("/dashboard/static/vendor/uPlot.iife.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"uPlot" in js.content[:2000]
    assert env.client.get("/dashboard/static/dashboard.js").status_code == 200
    assert env.client.get("/dashboard/static/vendor/uPlot.LICENSE").text.startswith(
        "The MIT License")
    for bad in ("../routes.py", "vendor/../../session.py", "nope.js"):
        assert env.client.get(f"/dashboard/static/{bad}").status_code == 404
