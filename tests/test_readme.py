"""The README's commands work as written: the five-minute tutorial runs end to end offline
in a temporary home (a local upstream, so the allow really answers 200), and every
`egressguard` line of every README command block names a real command with real flags."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from egressguard.cli.main import build_app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_the_five_minute_tutorial_runs_offline_in_a_temporary_home(tmp_path: Path) -> None:
    [block] = re.findall(r"```bash\n(.*?)```", _section("Five-minute tutorial (offline)"),
                         re.S)
    # Unique ports: the machine is shared (the README's 3128 and 8000 may be taken).
    proxy, web = _free_port(), _free_port()
    script = block.replace("3128", str(proxy)).replace("8000", str(web))
    env = {**os.environ, "TMPDIR": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("EGRESSGUARD_HOME", None)
    # Output to files, not pipes: the gateway's audit writer (its own process group)
    # would hold a pipe open after the script ends.
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_file.open("w") as out_fh, err_file.open("w") as err_fh:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], env=env,
                                   stdout=out_fh, stderr=err_fh, start_new_session=True)
        try:
            process.wait(timeout=150)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the gateway and web server, if left
    out, err = out_file.read_text(), err_file.read_text()
    assert process.returncode == 0, (out, err)
    lines = out.splitlines()
    assert "403" in lines and "200: allowed" in lines
    assert lines.index("403") < lines.index("200: allowed")
    assert f"change:  allow http:{web} to app.example.com" in out
    logged = [ln for ln in lines if f"app.example.com:{web}" in ln and " decision " in ln]
    assert [ln.split()[2] for ln in logged] == ["deny", "allow"], logged
    assert "Traceback" not in out + err


def _egressguard_lines() -> list[list[str]]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token and set(token) <= set(";&|"):  # the end of one command
                    if words[:1] == ["egressguard"]:
                        found.append(words)
                    words = []
                elif token and set(token) <= set("<>"):
                    words.append("\0")  # a redirection: drop its target too
                elif words[-1:] == ["\0"]:
                    words[-1:] = []
                else:
                    words.append(token)
    return found


def test_every_egressguard_line_in_the_readme_names_a_real_command_and_flags() -> None:
    root: Any = typer.main.get_command(build_app())
    lines = _egressguard_lines()
    assert len(lines) >= 40
    for argv in lines:
        command, rest = root, argv[1:]
        while rest and rest[0].startswith("--") and rest[0] in ("--home", "--debug"):
            rest = rest[2:] if rest[0] == "--home" else rest[1:]
        while rest and hasattr(command, "commands") and rest[0] in command.commands:
            command, rest = command.commands[rest[0]], rest[1:]
        assert not hasattr(command, "commands") or command.invoke_without_command, (
            f"{argv}: not a command")
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        flags = {a.split("=", 1)[0] for a in rest if a.startswith("-") and a != "-"}
        assert flags <= options, (argv, flags - options)
