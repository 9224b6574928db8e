"""DNS filter benchmark: `.venv/bin/python bench/dns.py` (documented in docs/benchmarks.md).

Starts, each in its own process, the tests' dnslib upstream server and
`egressguard dns serve` in front of it, then drives both from this process with
`--concurrency` asyncio workers (one connected UDP socket each) for `--queries` queries:

* direct: straight to the upstream;
* allowed: through the filter (question decided, forwarded, answer decided again);
* denied: through the filter for a name the policy refuses (answered by the filter alone).

It prints queries/s and p50/p99 latency per path and the ratios filter/direct measured in
the same run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnslib import DNSRecord

ROOT = Path(__file__).resolve().parent.parent
POLICY = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: allowed
    priority: 200
    action: allow
    rules:
      - {name: example, targets: ['*.example.com'], protocols: ['https:443']}
"""
UPSTREAM = """\
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.dns.upstream_server import Upstream
up = Upstream().start()
print(up.port, flush=True)
while True:
    time.sleep(3600)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _worker(addr: tuple[str, int], name: str, count: int, out: list[float],
                  failures: list[int]) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(addr)
    try:
        for _ in range(count):
            query = DNSRecord.question(name)
            query.header.id = secrets.randbelow(65536)
            packet = bytes(query.pack())
            start = time.perf_counter()
            await loop.sock_sendall(sock, packet)
            try:
                await asyncio.wait_for(loop.sock_recv(sock, 4096), 2.0)
            except TimeoutError:
                failures.append(1)
                continue
            out.append(time.perf_counter() - start)
    finally:
        sock.close()


async def _run(addr: tuple[str, int], name: str, queries: int, concurrency: int
               ) -> dict[str, float]:
    warm: list[float] = []
    await _worker(addr, name, 50, warm, [])
    latencies: list[float] = []
    failures: list[int] = []
    per = max(1, queries // concurrency)
    start = time.perf_counter()
    await asyncio.gather(*(_worker(addr, name, per, latencies, failures)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"qps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "lost": float(len(failures))}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(addr: tuple[str, int], name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            DNSRecord.parse(DNSRecord.question(name).send(*addr, timeout=0.5))
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answers on {addr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    procs: list[subprocess.Popen[str]] = []
    try:
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(ROOT)],
                                    stdout=subprocess.PIPE, text=True)
        procs.append(upstream)
        assert upstream.stdout is not None
        up_addr = ("127.0.0.1", int(upstream.stdout.readline()))
        policy = Path(tempfile.mkdtemp()) / "policy.yaml"
        policy.write_text(POLICY)
        filt_addr = ("127.0.0.1", _free_port())
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "from egressguard.cli.main import main; main()", "dns",
             "serve", "--listen", f"{filt_addr[0]}:{filt_addr[1]}",
             "--upstream", f"{up_addr[0]}:{up_addr[1]}", "--policy", str(policy),
             "--log-level", "warning", "--no-audit"], stdout=subprocess.DEVNULL))
        _wait_ready(up_addr, "allowed.example.com")
        _wait_ready(filt_addr, "allowed.example.com")

        try:
            import uvloop
            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:  # pragma: no cover
            runner = asyncio.Runner()
        filt_pid = procs[1].pid
        with runner:
            results = {
                "direct": runner.run(_run(up_addr, "allowed.example.com", args.queries,
                                          args.concurrency)),
            }
            for path, name in (("allowed", "allowed.example.com"),
                               ("denied", "denied.example.net")):
                cpu0 = _cpu_seconds(filt_pid)
                results[path] = runner.run(_run(filt_addr, name, args.queries,
                                                args.concurrency))
                # the filter's own CPU per answered query (the least load-sensitive figure)
                results[path]["cpu_us"] = ((_cpu_seconds(filt_pid) - cpu0) * 1e6
                                           / max(1, args.queries))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"Python {sys.version.split()[0]}; {args.queries} queries per path, "
          f"concurrency {args.concurrency}, UDP, loopback")
    print(f"{'path':<10}{'q/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'lost':>6}"
          f"{'filter CPU us/q':>17}")
    figures: dict[str, Any] = {"queries": args.queries, "concurrency": args.concurrency}
    for name, r in results.items():
        cpu = f"{r['cpu_us']:>17.0f}" if "cpu_us" in r else f"{'-':>17}"
        print(f"{name:<10}{r['qps']:>10.0f}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}"
              f"{r['lost']:>6.0f}{cpu}")
        for key, value in r.items():
            figures[f"{name}_{key}"] = round(value, 3)
    direct = results["direct"]
    for name in ("allowed", "denied"):
        qps_ratio = results[name]["qps"] / direct["qps"]
        p50_ratio = results[name]["p50_ms"] / direct["p50_ms"]
        figures[f"{name}_qps_ratio"] = round(qps_ratio, 3)
        figures[f"{name}_p50_ratio"] = round(p50_ratio, 3)
        print(f"{name} / direct: q/s x{qps_ratio:.2f}, p50 x{p50_ratio:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
