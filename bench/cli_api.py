"""How long `egressguard cluster update` takes end to end through a running API.

Starts `egressguard api` (plain HTTP, a private data home), logs a user in, then runs
`cluster update --add-allowed-fqdn` ROUNDS times as a new process each (what a user
waits for), and the same request from the client module alone (python -c, importing
only `egressguard.control.client`): the floor the CLI's start-up is measured against.
Prints the median and the best of each with the load average. Not a test.

    .venv/bin/python bench/cli_api.py [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
CLIENT_ONLY = """
import sys
from egressguard.control.client import remote
client = remote(None, None, None)
body = {"properties": {"allowedFqdnList": ["x%s.example.com" % sys.argv[1]]}}
client.request("PATCH", client.cluster_path("default"), body=body)
"""


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "EGRESSGUARD_HOME": str(root / "server")}
        server = subprocess.Popen([EGRESSGUARD, "api", "--port", "0"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None and server.stdout is not None
            token = next(line.strip() for line in server.stderr if line.startswith("egt_"))
            url = server.stdout.readline().split(" on ")[1].split()[0]
            (root / "token").write_text(token)
            user = {**os.environ, "EGRESSGUARD_HOME": str(root / "client"),
                    "XDG_CONFIG_HOME": str(root / "config")}
            subprocess.run([EGRESSGUARD, "login", "--server", url, "--token-file",
                            str(root / "token")], env=user, check=True,
                           stdout=subprocess.DEVNULL)
            cli = [_timed([EGRESSGUARD, "cluster", "update", "--add-allowed-fqdn",
                           f"a{i}.example.com", "-o", "json"], user) for i in range(rounds)]
            floor = [_timed([sys.executable, "-c", CLIENT_ONLY, str(i)], user)
                     for i in range(rounds)]
        finally:
            server.terminate()
            server.wait(timeout=15)
    load = os.getloadavg()[0]
    print(f"cluster update through the API, {rounds} runs, load average {load:.2f}")
    print(f"  egressguard cluster update: median {statistics.median(cli) * 1000:.0f} ms, "
          f"best {min(cli) * 1000:.0f} ms")
    print(f"  client module alone:        median {statistics.median(floor) * 1000:.0f} ms, "
          f"best {min(floor) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
