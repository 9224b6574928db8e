"""CLI start-up: `egressguard --help` and `cluster update` end to end (process start to exit).

Runs each command N times as a fresh process and prints the median and minimum wall time
and the median CPU time (user + system of the child: what the command costs without the
other jobs on a shared machine). `cluster update` runs twice: on the embedded SQLite store
(`--store`) and through a running API (`--api`, the server started here, warm).

    .venv/bin/python bench/cli_startup.py [--runs 15]

Not a test: figures go in docs/benchmarks.md with the command and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from egressguard.cli.main import main; main()"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _time(args: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    walls, cpus = [], []
    for i in range(runs):
        argv = [a.replace("{i}", str(i)) for a in args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([*CLI, *argv], env=env, capture_output=True, text=True,
                              check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
    return {"median_ms": round(statistics.median(walls) * 1000, 1),
            "min_ms": round(min(walls) * 1000, 1),
            "cpu_median_ms": round(statistics.median(cpus) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="egressguard-cli-bench-") as home:
        env = {**os.environ, "EGRESSGUARD_HOME": home}
        store = f"sqlite:///{Path(home) / 'store.db'}"
        subprocess.run([*CLI, "cluster", "list", "--store", store], env=env, check=True,
                       capture_output=True)
        port = _free_port()
        server = subprocess.Popen([*CLI, "api", "--port", str(port), "--store", store],
                                  env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            token = ""
            assert server.stdout is not None
            for line in server.stdout:
                if re.fullmatch(r"[A-Za-z0-9_\-.]{20,}", line.strip()):
                    token = line.strip()
                if "REST API on" in line or "Uvicorn running" in line:
                    break
            if not token:
                raise SystemExit("the API printed no bootstrap token")
            api = f"http://127.0.0.1:{port}"
            results = {
                "help": _time(["--help"], env, runs),
                "cluster_update_store": _time(
                    ["cluster", "update", "--add-allowed-fqdn", "s{i}.example.com",
                     "--store", store, "-o", "json"], env, runs),
                "cluster_update_api": _time(
                    ["cluster", "update", "--add-allowed-fqdn", "a{i}.example.com",
                     "--api", api, "--token", token, "-o", "json"], env, runs),
            }
        finally:
            server.terminate()
            server.wait(timeout=10)
    results["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
