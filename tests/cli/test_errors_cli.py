"""The CLI's one error handler: one line with a hint, exit 2; a traceback only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from egressguard.cli.main import error_line
from egressguard.engine import CompileError
from egressguard.errors import InputError, Unavailable

SCRIPT = Path(sys.executable).with_name("egressguard")
UNKNOWN_TAG = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: aks
    rules:
      - {name: tag, fqdn_tags: [NoSuchTag], protocols: ['https:443']}
"""

pytestmark = pytest.mark.timeout(120)


def run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=100,
                          check=False, env={**os.environ, "EGRESSGUARD_HOME": str(home), **env})


@pytest.fixture
def bad_policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(UNKNOWN_TAG)
    return path


def test_policy_naming_an_unknown_tag_is_one_line_with_a_hint_and_exit_2(
        tmp_path: Path, bad_policy: Path) -> None:
    # `recommend --diff` compiled the policy outside its own except: this was a traceback.
    done = run(tmp_path / "home", "recommend", "--diff", "--policy", str(bad_policy))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"error: {bad_policy}:5: application_rule_collections[0].rules[0]."
                     "fqdn_tags[0]: unknown FQDN tag 'NoSuchTag' (application rule "
                     "application:aks/tag) (hint: `egressguard catalog list` shows the known "
                     "FQDN tags)"]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_shows_the_traceback(tmp_path: Path, bad_policy: Path, how: str) -> None:
    args = ["recommend", "--diff", "--policy", str(bad_policy)]
    if how == "option":
        done = run(tmp_path / "home", "--debug", *args)
    else:
        done = run(tmp_path / "home", *args, EGRESSGUARD_DEBUG="1")
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "CompileError" in done.stderr
    assert "error: " not in done.stderr  # the trace instead of the line


def test_a_bug_is_one_line_naming_the_type_with_a_hint_to_rerun_with_debug() -> None:
    line = error_line(KeyError("rules"))
    assert line == ("error: unexpected KeyError: 'rules' "
                    "(hint: rerun with --debug to see the traceback)")


@pytest.mark.parametrize(("exc", "expected"), [
    (InputError("bad port"), "error: bad port"),
    (InputError("bad port", hint="use 1-65535"), "error: bad port (hint: use 1-65535)"),
    (Unavailable("store down", hint="start the database"),
     "error: store down (hint: start the database)"),
    (CompileError("unknown alias"), "error: unknown alias"),
    (FileNotFoundError(2, "No such file or directory", "p.yaml"),
     "error: [Errno 2] No such file or directory: 'p.yaml'"),
])
def test_error_line_is_the_message_and_the_hint_when_there_is_one(
        exc: BaseException, expected: str) -> None:
    assert error_line(exc) == expected
    assert "\n" not in error_line(exc)


@pytest.mark.parametrize("command", [("cluster", "list"), ("logs",)])
def test_unreachable_store_is_one_line_with_a_hint_and_exit_2(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    # Nothing listens on 127.0.0.1:1: `cluster list` printed a traceback, `logs` the
    # driver's three-line message.
    done = run(tmp_path / "home", *command, "--store", "postgresql://127.0.0.1:1/x")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach the store: connection failed")
    assert lines[0].endswith("and that --store / EGRESSGUARD_STORE names it)")
    assert "Traceback" not in done.stderr
