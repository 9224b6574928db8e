"""Running `nft`: apply a rendered ruleset, show it, remove it (the I/O edge).

`nft -f` runs the whole file as one transaction: either the new table replaces the old
one or nothing changes. Network namespaces are entered with `ip netns exec`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from egressguard.errors import Unavailable

_NFT_FALLBACK = Path("/usr/sbin/nft")


class FirewallError(Unavailable, RuntimeError):
    """nft is missing, we are not root, or the kernel refused the ruleset."""


def nft_binary() -> str:
    found = shutil.which("nft") or (str(_NFT_FALLBACK) if _NFT_FALLBACK.exists() else None)
    if found is None:
        raise FirewallError("nft not found: install nftables (Debian: apt-get install "
                            "nftables)")
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        raise FirewallError("changing or reading kernel firewall rules needs root "
                            "(CAP_NET_ADMIN); run with sudo")


def _argv(args: list[str], netns: str | None) -> list[str]:
    argv = [nft_binary(), *args]
    if netns is None:
        return argv
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if not Path(ip).exists():
        raise FirewallError("ip not found: install iproute2 to use --netns")
    return [ip, "netns", "exec", netns, *argv]


def _run(args: list[str], netns: str | None, text: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    require_root()
    try:
        return subprocess.run(_argv(args, netns), input=text, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FirewallError(f"nft {' '.join(args)} did not finish in {timeout:.0f} s"
                            ) from None


def apply(ruleset_text: str, netns: str | None = None) -> None:
    """Load the ruleset atomically (replacing the previous egressguard table)."""
    done = _run(["-f", "-"], netns, ruleset_text)
    if done.returncode != 0:
        raise FirewallError("nft refused the ruleset (nothing changed): "
                            + (done.stderr.strip() or f"exit {done.returncode}"))


def status(table: str = "egressguard", netns: str | None = None) -> str | None:
    """The installed table as `nft list` shows it, with counters; None if absent."""
    done = _run(["list", "table", "inet", table], netns)
    if done.returncode == 0:
        return done.stdout
    if "No such file or directory" in done.stderr:
        return None
    raise FirewallError(done.stderr.strip() or f"nft list failed (exit {done.returncode})")


def remove(table: str = "egressguard", netns: str | None = None) -> bool:
    """Delete the table; False if it was not there."""
    if status(table, netns) is None:
        return False
    done = _run(["-f", "-"], netns, f"table inet {table}\ndelete table inet {table}\n")
    if done.returncode != 0:
        raise FirewallError(done.stderr.strip() or f"nft failed (exit {done.returncode})")
    return True
