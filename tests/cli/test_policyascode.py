"""`egressguard apply -f` (idempotent: one version per content change, none otherwise) and
`egressguard validate -f` (exit 0/1/2, file:line errors), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.store import Store

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
POLICY = """\
restrict_outbound_network_access: true
allowed_fqdn_list: [api.example.com]
"""
# The same content, written differently: comments, key order, spelling of the flag.
POLICY_REFORMATTED = """\
# reviewed in PR 42
allowed_fqdn_list:
  - api.example.com      # the billing API
restrict_outbound_network_access: Enabled
"""
POLICY_CHANGED = """\
restrict_outbound_network_access: true
allowed_fqdn_list: [api.example.com, pypi.org]
"""
INVALID = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: web
    priority: 100
    action: allow
    rules:
      - name: bad
        targets: [example.com]
        protocols: ['gopher:70']
"""


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _numbers(store_url: str, cluster: str) -> list[int]:
    with Store(store_url) as st:
        return [v.number for v in st.versions(cluster)]


def test_apply_twice_makes_one_version_and_reformatting_makes_none(
        store_url: str, tmp_path: Path) -> None:
    policy = _write(tmp_path, "policy.yaml", POLICY)
    code, out = _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: version 1")
    code, out = _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: unchanged (version 1)")
    same = _write(tmp_path, "same.yaml", POLICY_REFORMATTED)
    code, out = _run("apply", "-f", str(same), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: unchanged (version 1)")
    assert _numbers(store_url, "prod") == [1]

    changed = _write(tmp_path, "policy2.yaml", POLICY_CHANGED)
    code, out = _run("apply", "-f", str(changed), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: version 2")
    code, out = _run("apply", "-f", str(changed), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: unchanged (version 2)")
    with Store(store_url) as st:
        current = st.current("prod")
    assert current.number == 2 and current.summary == "applied policy2.yaml"
    assert current.policy.allowed_fqdn_list == ["api.example.com", "pypi.org"]


def test_dry_run_and_diff_show_the_change_and_write_nothing(
        store_url: str, tmp_path: Path) -> None:
    policy = _write(tmp_path, "policy.yaml", POLICY)
    assert _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url)[0] == 0
    changed = _write(tmp_path, "policy2.yaml", POLICY_CHANGED)
    code, out = _run("apply", "-f", str(changed), "--cluster", "prod", "--store", store_url,
                     "--dry-run", "--diff")
    assert code == 0, out
    assert "--- prod@1" in out and "+- pypi.org" in out
    assert out.strip().endswith("cluster prod: would create version 2 (dry run)")
    assert _numbers(store_url, "prod") == [1]
    code, out = _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url,
                     "--dry-run", "--diff")
    assert (code, out.strip()) == (0, "cluster prod: unchanged (version 1)")


def test_apply_of_an_invalid_file_names_the_line_and_changes_nothing(
        store_url: str, tmp_path: Path) -> None:
    policy = _write(tmp_path, "policy.yaml", POLICY)
    assert _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url)[0] == 0
    bad = _write(tmp_path, "bad.yaml", INVALID)
    code, out = _run("apply", "-f", str(bad), "--cluster", "prod", "--store", store_url)
    assert code == 2 and "line 9" in out and "Traceback" not in out
    unknown_tag = _write(tmp_path, "tag.yaml", """\
application_rule_collections:
  - {name: c, priority: 100, action: allow, rules: [{name: r, fqdn_tags: [NoSuchTag]}]}
""")
    code, out = _run("apply", "-f", str(unknown_tag), "--cluster", "prod", "--store", store_url)
    assert code == 2 and "NoSuchTag" in out and "Traceback" not in out
    assert _numbers(store_url, "prod") == [1]


def test_apply_to_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    policy = _write(tmp_path, "policy.yaml", POLICY)
    code, out = _run("apply", "-f", str(policy), "--store",
                     "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert code == 2 and out.startswith("error: ") and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_validate_exit_codes_and_file_line_errors(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.yaml", POLICY)
    bad = _write(tmp_path, "bad.yaml", INVALID)
    code, out = _run("validate", "-f", str(good))
    assert (code, out.strip()) == (0, f"{good}: valid")
    code, out = _run("validate", "-f", str(good), "-f", str(bad))
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith(str(bad))]
    assert errors and errors[0].startswith(f"{bad}:9: application_rule_collections[0]")
    broken = _write(tmp_path, "broken.yaml", "allowed_fqdn_list: [a.com\n")
    code, out = _run("validate", "-f", str(broken))
    assert code == 1 and f"{broken}:" in out and "not valid YAML" in out
    tag = _write(tmp_path, "tag.yaml", """\
application_rule_collections:
  - {name: c, priority: 100, action: allow, rules: [{name: r, fqdn_tags: [NoSuchTag]}]}
""")
    code, out = _run("validate", "-f", str(tag))
    assert code == 1 and "NoSuchTag" in out
    code, out = _run("validate", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in out and "Traceback" not in out


def test_concurrent_applies_of_one_file_make_one_version(store_url: str, tmp_path: Path
                                                         ) -> None:
    import subprocess
    import sys

    policy = _write(tmp_path, "policy.yaml", POLICY_CHANGED)
    program = str(Path(sys.executable).parent / "egressguard")
    Store(store_url).close()  # migrate first: the race is on the version, not the schema
    procs = [subprocess.Popen([program, "apply", "-f", str(policy), "--cluster", "default",
                               "--store", store_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = sorted(out.strip() for out, _ in outputs)
    assert lines == ["cluster default: unchanged (version 2)",
                     "cluster default: version 2"], outputs
    assert _numbers(store_url, "default") == [2, 1]


def test_a_version_written_out_applies_back_unchanged(store_url: str, tmp_path: Path) -> None:
    policy = _write(tmp_path, "policy.yaml", POLICY_CHANGED)
    assert _run("apply", "-f", str(policy), "--cluster", "prod", "--store", store_url)[0] == 0
    code, text = _run("versions", "show", "1", "--name", "prod", "--store", store_url)
    assert code == 0
    written = _write(tmp_path, "from-store.yaml", text)
    code, out = _run("apply", "-f", str(written), "--cluster", "prod", "--store", store_url)
    assert (code, out.strip()) == (0, "cluster prod: unchanged (version 1)")
