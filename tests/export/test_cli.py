"""`egressguard export`: formats, warnings on stderr and in the header, `--strict`
refusals, `--out`, a stored cluster (SQLite and PostgreSQL) and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import build_app
from egressguard.firewall import render_ruleset
from egressguard.policy import load_policy, load_policy_text

POLICY = """\
restrict_outbound_network_access: true
application_rule_collections:
- name: aks
  rules:
  - {name: registry, targets: [mcr.microsoft.com, .data.mcr.microsoft.com]}
  - {name: glob, targets: [md-*.blob.storage.azure.net], protocols: ["https:443"]}
network_rule_collections:
- name: net
  rules:
  - {name: ntp, destinations: [91.189.0.0/16], protocols: [udp], ports: [123]}
"""
EXACT = """\
restrict_outbound_network_access: true
application_rule_collections:
- name: aks
  rules:
  - {name: registry, targets: [mcr.microsoft.com, .data.mcr.microsoft.com]}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(["export"]), ["export", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("fmt", ["yaml", "squid", "cilium", "kubernetes", "azure-firewall",
                                 "nftables"])
def test_every_format_exports_and_warns_in_both_places(policy_file: Path, fmt: str) -> None:
    code, out, err = _run("--format", fmt, "--policy", str(policy_file))
    assert code == 0, err
    warnings = [line.removeprefix("warning: ") for line in err.splitlines()
                if line.startswith("warning: ")]
    for warning in warnings:
        assert warning in out, f"{warning!r} missing from the output's header or metadata"
    # Squid (dstdom_regex) and Cilium (matchPattern) have label globs; Azure has none,
    # Kubernetes and nftables no names at all.
    assert bool(warnings) == (fmt in ("kubernetes", "azure-firewall", "nftables")), err


def test_squid_glob_is_expressed_and_exact_policy_passes_strict(tmp_path: Path) -> None:
    path = tmp_path / "exact.yaml"
    path.write_text(EXACT)
    code, out, err = _run("--format", "squid", "--policy", str(path), "--strict")
    assert code == 0, err
    assert "acl eg_a1_names dstdomain -n mcr.microsoft.com" in out
    assert "acl eg_a1_names dstdomain -n .data.mcr.microsoft.com" in out


def test_strict_refuses_with_exit_1_and_writes_nothing(policy_file: Path,
                                                       tmp_path: Path) -> None:
    out_file = tmp_path / "out.json"
    code, out, err = _run("--format", "azure-firewall", "--policy", str(policy_file), "--strict",
                          "--out", str(out_file))
    assert code == 1
    assert out == "" and not out_file.exists()
    assert "md-*.blob.storage.azure.net" in err and "refused:" in err


def test_out_writes_the_file(policy_file: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "policy.cilium.yaml"
    code, out, err = _run("--format", "cilium", "-f", str(policy_file), "--out", str(out_file))
    assert code == 0 and out == ""
    assert "kind: CiliumClusterwideNetworkPolicy" in out_file.read_text()
    assert f"wrote {out_file}" in err


def test_nftables_format_is_the_kernel_renderer(policy_file: Path) -> None:
    code, out, _ = _run("--format", "nftables", "--policy", str(policy_file))
    assert code == 0
    assert render_ruleset(load_policy(policy_file)) in out


def test_yaml_export_of_a_stored_cluster_round_trips(store_url: str) -> None:
    from egressguard.store import open_store

    policy = load_policy_text(POLICY)
    store = open_store(store_url)
    try:
        store.commit("edge", policy, "alice", "for export", create=True)
    finally:
        store.close()
    code, out, err = _run("--cluster", "edge", "--store", store_url)
    assert code == 0, err
    assert "(policy: cluster edge version 1)" in out
    assert load_policy_text(out) == policy


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "pf"], "unknown format 'pf'"),
    (["--policy", "a.yaml", "--cluster", "x"], "not both"),
    (["--policy", "/nonexistent/p.yaml"], "cannot read"),
    (["--format", "cilium", "--identity", "nonsense"], "--identity"),
    (["--format", "kubernetes", "--gateway", "gw.local:3128"], "expected ip[:port]"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str,
                                          policy_file: Path) -> None:
    if "--policy" not in args and "--cluster" not in args:
        args = [*args, "--policy", str(policy_file)]
    code, out, err = _run(*args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_service_tag_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("network_rule_collections:\n- name: n\n  rules:\n  - {name: r, "
                    "destinations: [NoSuchTag], action: deny}\n")
    code, _, err = _run("--format", "squid", "--policy", str(path))
    assert code == 2 and "unknown service tag 'NoSuchTag'" in err
