"""The systemd units (deploy/systemd): `systemd-analyze verify` finds nothing to say,
`systemd-analyze security --offline` rates each exposure low, and a parser asserts the
hardening every unit must have, with capabilities only where needed: CAP_NET_ADMIN for
the firewall watcher alone, CAP_NET_BIND_SERVICE for the DNS filter (port 53) alone."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import cli_options

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = {"egressguard-gateway.service": ("serve",),
         "egressguard-dns.service": ("dns", "serve"),
         "egressguard-firewall.service": ("firewall", "apply")}
CAPABILITIES = {"egressguard-gateway.service": "",
                "egressguard-dns.service": "CAP_NET_BIND_SERVICE",
                "egressguard-firewall.service": "CAP_NET_ADMIN"}
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "SystemCallArchitectures": "native", "StateDirectory": "egressguard",
    "User": "egressguard", "UMask": "0077",
}
MAX_EXPOSURE = 2.5  # systemd-analyze security: 0 (locked down) .. 10 (unprotected)
# Landing on main with the firewall watcher; accepted before it is there.
PENDING_FLAGS = {("firewall", "apply"): {"--watch"}}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def hardening_problems(unit: str, service: dict[str, list[str]]) -> list[str]:
    problems = [f"{key} is not {want}" for key, want in HARDENING.items()
                if service.get(key, [""])[-1] != want]
    caps = CAPABILITIES[unit]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        if service.get(key, [None])[-1] != caps:
            problems.append(f"{key} is not {caps!r}")
    families = set(" ".join(service.get("RestrictAddressFamilies", [])).split())
    allowed = {"AF_INET", "AF_INET6", "AF_UNIX"} | (
        {"AF_NETLINK"} if caps == "CAP_NET_ADMIN" else set())
    if not families or families - allowed:
        problems.append(f"address families {sorted(families)} beyond {sorted(allowed)}")
    if "@system-service" not in service.get("SystemCallFilter", []):
        problems.append("no SystemCallFilter=@system-service")
    return problems


@pytest.fixture(scope="module")
def units() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {name: parse_unit((ROOT / name).read_text()) for name in UNITS}


def test_every_unit_has_the_hardening(units: dict[str, Any]) -> None:
    for name, unit in units.items():
        assert hardening_problems(name, unit["Service"]) == [], name
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_hardening_check_can_fail(units: dict[str, Any]) -> None:
    service = {k: list(v) for k, v in units["egressguard-gateway.service"]["Service"].items()}
    service["CapabilityBoundingSet"] = ["CAP_NET_ADMIN"]
    service["ProtectSystem"] = ["full"]
    del service["NoNewPrivileges"]
    assert hardening_problems("egressguard-gateway.service", service) == [
        "NoNewPrivileges is not yes", "ProtectSystem is not strict",
        "CapabilityBoundingSet is not ''"]




def test_exec_start_uses_only_flags_that_exist(units: dict[str, Any]) -> None:
    for name, path in UNITS.items():
        (exec_start,) = units[name]["Service"]["ExecStart"]
        argv = shlex.split(exec_start)
        assert argv[0] == "/usr/local/bin/egressguard"
        assert tuple(argv[1:1 + len(path)]) == path
        flags = {a.split("=", 1)[0] for a in argv[1 + len(path):] if a.startswith("--")}
        unknown = flags - cli_options(path) - PENDING_FLAGS.get(path, set())
        assert not unknown, (name, unknown)
        for var in re.findall(r"\$\{(\w+)\}", exec_start):  # every ${VAR} has a default
            assert any(e.startswith(f"{var}=") for e in units[name]["Service"]["Environment"])


def _installed_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's egressguard (verify checks that
    the program exists)."""
    program = str(Path(sys.executable).parent / "egressguard")
    copies = []
    for name in UNITS:
        copy = tmp_path / name
        copy.write_text((ROOT / name).read_text().replace("/usr/local/bin/egressguard",
                                                          program))
        copies.append(copy)
    return copies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (Debian package systemd) is not installed")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    copies = _installed_copies(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, copies)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = tmp_path / "broken.service"
    broken.write_text(copies[0].read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert "Unknown key" in result.stderr  # verify does report what we would get wrong
    for copy in copies:
        result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)],
                                capture_output=True, text=True, timeout=60)
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE, (copy.name, match.group(1))


def test_the_dedicated_user_is_declared_and_exempt_from_the_firewall(
        units: dict[str, Any]) -> None:
    sysusers = (ROOT / "egressguard.sysusers.conf").read_text()
    (entry,) = [line.split() for line in sysusers.splitlines()
                if line.strip() and not line.startswith("#")]
    assert entry[:2] == ["u", "egressguard"] and "/var/lib/egressguard" in entry
    argv = shlex.split(units["egressguard-firewall.service"]["Service"]["ExecStart"][0])
    assert argv[argv.index("--exempt-user") + 1] == "egressguard"  # the gateway's traffic
