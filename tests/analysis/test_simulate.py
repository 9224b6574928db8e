"""What-if: a known request list under a policy in force and a proposed one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.analysis.simulate import RequestListError, parse_requests
from egressguard.cli.main import app
from egressguard.engine import Kind

DATA = Path(__file__).parent / "data"
runner = CliRunner()

EXPECTED_ROWS = [
    ["2", "https://mystore.blob.core.windows.net/c/x", "allow application:storage/blob",
     "allow application:storage/blob", ""],
    ["3", "https://evil.blob.core.windows.net/c/x", "allow application:storage/blob",
     "deny service_endpoint", "allow -> deny"],
    ["4", "connect evil.dfs.core.windows.net:443", "deny default", "deny service_endpoint",
     "rule"],
    ["5", "sql https://myserver.database.windows.net", "deny default", "allow cluster[0]",
     "deny -> allow"],
    ["6", "https://my-eventhub.servicebus.windows.net/",
     "allow allowed_fqdn:my-eventhub.servicebus.windows.net",
     "allow allowed_fqdn:my-eventhub.servicebus.windows.net", ""],
    ["7", "dns mystore.blob.core.windows.net", "allow application:storage/blob",
     "allow application:storage/blob", ""],
]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EGRESSGUARD_STORE", raising=False)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["simulate", *args])
    return result.exit_code, result.stdout, result.stderr


def table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in output.splitlines() if line.startswith("│")]


def test_table_shows_each_request_under_both_policies_and_exit_1_on_change() -> None:
    code, out, _ = run("--urls", str(DATA / "urls.txt"), "--current",
                       str(DATA / "current.yaml"), "--policy", str(DATA / "proposed.yaml"))
    assert code == 1
    assert table_rows(out) == EXPECTED_ROWS
    assert out.rstrip().endswith("2 of 6 verdicts change (1 newly denied, 1 newly allowed)")


def test_json_lists_every_request_with_both_decisions() -> None:
    code, out, _ = run("--urls", str(DATA / "urls.txt"), "--current",
                       str(DATA / "current.yaml"), "--policy", str(DATA / "proposed.yaml"),
                       "--output", "json")
    data = json.loads(out)
    assert code == 1
    assert {k: data[k] for k in ("requests", "changed", "summary")} == {
        "requests": 6, "changed": 2,
        "summary": "2 of 6 verdicts change (1 newly denied, 1 newly allowed)"}
    assert data["current"].endswith("current.yaml")
    assert data["proposed"].endswith("proposed.yaml")
    projected = [[r["line"], r["kind"], r["current"]["verdict"], r["current"]["rule"],
                  r["proposed"]["verdict"], r["proposed"]["layer"], r["change"], r["changed"]]
                 for r in data["results"]]
    assert projected == [
        [2, "http", "allow", "application:storage/blob", "allow", "application", "none", False],
        [3, "http", "allow", "application:storage/blob", "deny", "service_endpoint",
         "allow -> deny", True],
        [4, "connect", "deny", "default", "deny", "service_endpoint", "rule", False],
        [5, "callout", "deny", "default", "allow", "cluster", "deny -> allow", True],
        [6, "http", "allow", "allowed_fqdn:my-eventhub.servicebus.windows.net", "allow",
         "allowed_fqdn", "none", False],
        [7, "dns", "allow", "application:storage/blob", "allow", "application", "none",
         False],
    ]


def test_no_verdict_change_exits_0() -> None:
    code, out, _ = run("--urls", str(DATA / "urls.txt"), "--current",
                       str(DATA / "current.yaml"), "--policy", str(DATA / "current.yaml"))
    assert code == 0
    assert "no verdict changes in 6 requests" in out


def test_without_store_the_policy_in_force_is_the_shipped_default(tmp_path: Path) -> None:
    urls = tmp_path / "u.txt"
    urls.write_text("https://example.com/\n")
    code, out, _ = run("--urls", str(urls), "--output", "json")
    data = json.loads(out)
    assert (code, data["current"], data["results"][0]["current"]["verdict"]) == (
        0, "built-in deny-all policy", "deny")
    assert not (tmp_path / "home" / "egressguard.db").exists()  # never created to read


def test_policy_in_force_comes_from_the_stored_cluster(tmp_path: Path) -> None:
    from egressguard.policy import load_policy
    from egressguard.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        store.ensure_cluster("prod", load_policy(DATA / "current.yaml"), "test", "seed")
    code, out, _ = run("--urls", str(DATA / "urls.txt"), "--cluster", "prod", "--store", url,
                       "--policy", str(DATA / "proposed.yaml"), "-o", "json")
    data = json.loads(out)
    assert code == 1 and data["current"].startswith("cluster prod version ")
    assert data["changed"] == 2
    code, _, err = run("--urls", str(DATA / "urls.txt"), "--cluster", "nope", "--store", url)
    assert code == 2 and "nope" in err


@pytest.mark.parametrize(("content", "message"), [
    ("https://ok.example/\nftp-ish thing\n", "line 2: 'ftp-ish' is neither a URL"),
    ("connect host.example\n", "line 1: connect needs host:port"),
    ("https://x.example/ colour=blue\n", "line 1: unknown option 'colour=blue'"),
    ("https://x.example/ address=not-an-ip\n", "line 1:"),
    ("# only comments\n\n", "no requests"),
])
def test_bad_request_list_exits_2_naming_the_line(tmp_path: Path, content: str,
                                                  message: str) -> None:
    urls = tmp_path / "u.txt"
    urls.write_text(content)
    code, out, err = run("--urls", str(urls), "--current", str(DATA / "current.yaml"))
    assert code == 2 and message in err and out == ""


def test_bad_proposed_policy_or_missing_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("restrict_outbound_network_access: maybe\n")
    code, _, err = run("--urls", str(DATA / "urls.txt"), "--current",
                       str(DATA / "current.yaml"), "--policy", str(bad))
    assert code == 2 and "line 1" in err and "restrict_outbound_network_access" in err
    code, _, err = run("--urls", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read" in err


def test_request_list_format() -> None:
    probes = parse_requests(
        "# comment\n"
        "https://a.example/#frag   # trailing comment\n"
        "kusto https://c.kusto.windows.net\n"
        "flow 20.1.2.3:22 source=10.0.0.4\n"
        "http https://b.example/ address=203.0.113.5,203.0.113.6 port=8443\n"
        "DNS b.example\n")
    assert [(p.line, p.text, p.request.kind) for p in probes] == [
        (2, "https://a.example/#frag", Kind.HTTP),
        (3, "kusto https://c.kusto.windows.net", Kind.CALLOUT),
        (4, "flow 20.1.2.3:22 source=10.0.0.4", Kind.FLOW),
        (5, "http https://b.example/ address=203.0.113.5,203.0.113.6 port=8443", Kind.HTTP),
        (6, "DNS b.example", Kind.DNS)]
    assert probes[1].request.callout_type == "kusto"
    assert (probes[2].request.port, str(probes[2].request.source)) == (22, "10.0.0.4")
    assert probes[3].request.port == 8443 and len(probes[3].request.addresses) == 2
    with pytest.raises(RequestListError) as info:
        parse_requests("bogus\nalso-bogus\n", "f.txt")
    assert [n for n, _ in info.value.problems] == [1, 2]
