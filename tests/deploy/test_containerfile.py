"""Lint of the Containerfile (no container engine here to build it): pinned base images,
a non-root USER, no ADD from URLs, a HEALTHCHECK, a .containerignore that keeps secrets
and the venv out of the build context, and a default command with real flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy.conftest import cli_options

ROOT = Path(__file__).resolve().parents[2]
PINNED = re.compile(r"^[\w.\-/:]+(:[\w][\w.\-]*|@sha256:[0-9a-f]{64})$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def lint(text: str) -> list[str]:
    """Every rule the Containerfile breaks (empty: none)."""
    problems = []
    steps = instructions(text)
    stages: set[str] = set()
    last_from = max((i for i, (w, _) in enumerate(steps) if w == "FROM"), default=-1)
    if last_from < 0:
        return ["no FROM"]
    for word, args in steps:
        if word == "FROM":
            parts = args.split()
            image = parts[0]
            if image not in stages and (not PINNED.match(image) or image.endswith(":latest")):
                problems.append(f"base image {image} not pinned by tag or digest")
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        if word == "ADD" and re.search(r"\b(https?|ftp)://", args):
            problems.append(f"ADD from a URL: {args}")
    final = steps[last_from:]
    users = [args.split(":")[0] for w, args in final if w == "USER"]
    if not users or users[-1] in ("0", "root"):
        problems.append("final stage does not run as a non-root USER")
    if not any(w == "HEALTHCHECK" and args.upper() != "NONE" for w, args in final):
        problems.append("no HEALTHCHECK")
    return problems


def test_the_containerfile_passes_the_lint() -> None:
    assert lint((ROOT / "Containerfile").read_text()) == []


def test_the_lint_catches_what_it_is_for() -> None:
    bad = """\
FROM python
FROM python:latest AS b
ADD https://example.com/get.sh /get.sh
RUN sh /get.sh
USER root
"""
    assert lint(bad) == ["base image python not pinned by tag or digest",
                         "base image python:latest not pinned by tag or digest",
                         "ADD from a URL: https://example.com/get.sh /get.sh",
                         "final stage does not run as a non-root USER", "no HEALTHCHECK"]
    digest = "FROM python@sha256:" + "a" * 64 + "\nUSER 10001\nHEALTHCHECK CMD true\n"
    assert lint(digest) == []


def test_the_build_context_excludes_secrets_and_only_copies_what_exists() -> None:
    ignore = [line.strip() for line in (ROOT / ".containerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv", "*.db", "audit.key", "tests", "**/__pycache__"):
        assert needed in ignore
    for word, args in instructions((ROOT / "Containerfile").read_text()):
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignore, source




def test_the_default_command_is_the_gateway_with_real_flags() -> None:
    steps = dict(instructions((ROOT / "Containerfile").read_text()))
    assert json.loads(steps["ENTRYPOINT"]) == ["egressguard"]
    cmd = json.loads(steps["CMD"])
    assert cmd[0] == "serve"
    assert {a.split("=", 1)[0] for a in cmd[1:]} <= cli_options(("serve",))
    assert "--api-listen=0.0.0.0:8080" in cmd  # the port the HEALTHCHECK asks
    assert "127.0.0.1:8080/healthz" in steps["HEALTHCHECK"]
