"""Audit-log overhead benchmark: `.venv/bin/python bench/audit.py` (docs/benchmarks.md).

Runs the real gateway (uvloop, in this process) in front of a minimal keep-alive HTTP
upstream (its own process) and drives it from a load generator (its own process: N
keep-alive client connections sending absolute-form GETs through the proxy): `wrk` (C)
when installed, else (or with `--loadgen python`) a Python asyncio client, which itself
takes most of a core on a 2-core box and so measures box saturation more than the gateway.
Each round measures completed requests per second over a fixed window with the gateway's sink set to
`NullSink` (off), `AuditLog` (thread: sealing and SQL in a thread of the gateway process)
or `ProcessAuditLog` (process: the same in a child process); both write SQLite in WAL mode
with synchronous=FULL, AES-GCM sealing and the HMAC chain, two records per request
(decision and close). All modes run in every round, so they see the same machine load.
The last line is one JSON object with median rates, their ratios to off (target >= 0.90)
and the gateway process's CPU time per request in each mode: on a shared, noisy machine
rates swing with other load while CPU per request does not, so `cpu_bound_ratio_*` (off
CPU / mode CPU per request) is the rate ratio to expect when the gateway is CPU-bound.
(The process mode's child CPU is not in that figure; it runs on another core.)

Round 0 is a warm-up; rounds alternate which mode goes first.
Options: --rounds 3 --seconds 4 --conns 32 --store URL (default: a temp SQLite file)
--loadgen wrk|python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# -- upstream (own process) ------------------------------------------------------------------

async def _upstream(port_file: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    await server.serve_forever()


# -- load generator (own process) ------------------------------------------------------------

async def _loadgen(proxy_port: int, target: str, seconds: float, conns: int,
                   warmup: float) -> None:
    request = (f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n").encode()
    done = 0
    start = time.monotonic() + warmup
    end = start + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        while True:
            now = time.monotonic()
            if now >= end:
                break
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected response {head[:60]!r}")
            if start <= time.monotonic() < end:
                done += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(conns)))
    print(json.dumps({"requests": done, "seconds": seconds}), flush=True)


def _wrk(proxy_port: int, target: str, seconds: float, conns: int, tmp: Path) -> dict[str, float]:
    """The same load from `wrk` (C): absolute-form GETs through the proxy, keep-alive."""
    script = tmp / "wrk.lua"
    script.write_text(f'wrk.path = "http://{target}/"\nwrk.headers["Host"] = "{target}"\n')
    duration = f"{max(1, round(seconds))}s"
    out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", duration, "-s",
                          str(script), f"http://127.0.0.1:{proxy_port}/"],
                         check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"unexpected responses:\n{out}")
    total = int(re.search(r"(\d+) requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    took = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    return {"requests": total, "seconds": took}


# -- the benchmark ---------------------------------------------------------------------------

def _start_gateway(upstream_port: int):
    import uvloop

    from egressguard.engine.holder import SnapshotHolder
    from egressguard.gateway import Gateway, Resolver, parse_resolve
    from egressguard.policyfile import load_active

    policy = Path(tempfile.mkdtemp()) / "policy.yaml"
    policy.write_text(
        "restrict_outbound_network_access: Enabled\n"
        "network_rule_collections:\n"
        "  - name: bench\n    priority: 100\n    rules:\n"
        "      - {name: upstream, destinations: [127.0.0.1/32], protocols: [TCP],"
        " match_resolved_names: true}\n")
    gateway = Gateway(SnapshotHolder(load_active(policy)),
                      resolver=Resolver(parse_resolve(["up.bench=127.0.0.1"]), system=False))
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(gateway.start("127.0.0.1", 0), loop).result(10)
    return gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--store", default=None)
    parser.add_argument("--max-delay", type=float, default=0.05,
                        help="the audit log's group-commit linger (seconds)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after start-up (as a server would)")
    parser.add_argument("--loadgen", choices=("wrk", "python"),
                        default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--python-loadgen", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(_upstream(args.upstream))
        return
    if args.python_loadgen:
        port, target, seconds, conns = args.python_loadgen
        asyncio.run(_loadgen(int(port), target, float(seconds), int(conns), warmup=0.5))
        return

    from egressguard.audit.events import NullSink
    from egressguard.audit.log import AuditLog
    from egressguard.audit.remote import ProcessAuditLog

    tmp = Path(tempfile.mkdtemp(prefix="egressguard-bench-audit-"))
    os.environ.setdefault("EGRESSGUARD_HOME", str(tmp))
    port_file = tmp / "upstream.port"
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(port_file)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        upstream_port = int(port_file.read_text())
        gateway = _start_gateway(upstream_port)
        proxy_port = gateway.addresses[0][1]
        url = args.store or f"sqlite:///{tmp / 'audit.db'}"
        delay = args.max_delay
        logs: dict[str, AuditLog] = {"thread": AuditLog(url, max_delay=delay),
                                     "process": ProcessAuditLog(url, max_delay=delay)}
        modes = ("off", "thread", "process")
        if args.gc_freeze:
            import gc
            gc.collect()
            gc.freeze()
        rates: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}  # gateway-process CPU s/request
        for round_no in range(args.rounds + 1):     # round 0 warms up, not counted
            for mode in modes if round_no % 2 else modes[::-1]:
                log = logs.get(mode)
                checkpoint = gateway.checkpoint
                checkpoint.sink = log if log is not None else NullSink()
                checkpoint.recording = log is not None  # off: no event is built at all
                cpu_start = time.process_time()
                target = f"up.bench:{upstream_port}"
                if args.loadgen == "wrk":
                    result = _wrk(proxy_port, target, args.seconds, args.conns, tmp)
                else:
                    out = subprocess.run(
                        [sys.executable, __file__, "--python-loadgen", str(proxy_port),
                         target, str(args.seconds), str(args.conns)],
                        check=True, capture_output=True, text=True).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                if log is not None:
                    log.flush(timeout=60)      # the writer's work is part of the round
                cpu_used = time.process_time() - cpu_start
                rate = result["requests"] / result["seconds"]
                # CPU over the whole round (warm-up tail included) per counted request:
                # slightly pessimistic for both modes alike.
                per_request = cpu_used / max(1, result["requests"])
                if round_no:
                    rates[mode].append(rate)
                    cpu[mode].append(per_request)
                print(f"round {round_no} audit {mode:<7}: {rate:8.0f} requests/s, "
                      f"{per_request * 1e6:6.0f} us CPU/request"
                      f"{' (warm-up)' if not round_no else ''}", flush=True)
        written = sum(log.acknowledged for log in logs.values())
        if not all(log.acknowledged for log in logs.values()):
            raise SystemExit("an audit mode wrote no records: the benchmark is not measuring")
        for log in logs.values():
            log.close()
    finally:
        upstream.terminate()
        upstream.wait(5)
    med = {m: statistics.median(rates[m]) for m in modes}
    med_cpu = {m: statistics.median(cpu[m]) for m in modes}
    print(json.dumps({
        "bench": "audit", "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadgen": args.loadgen, "load": os.getloadavg()[0],
        "conns": args.conns, "seconds_per_round": args.seconds, "rounds": args.rounds,
        **{f"rps_{m}": round(med[m]) for m in modes},
        "ratio_thread": round(med["thread"] / med["off"], 3),
        "ratio_process": round(med["process"] / med["off"], 3),
        **{f"cpu_us_per_request_{m}": round(med_cpu[m] * 1e6, 1) for m in modes},
        "cpu_bound_ratio_thread": round(med_cpu["off"] / med_cpu["thread"], 3),
        "cpu_bound_ratio_process": round(med_cpu["off"] / med_cpu["process"], 3),
        **{f"rps_{m}_all": [round(r) for r in rates[m]] for m in modes},
        "audit_records": written}))


if __name__ == "__main__":
    main()
