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

`--writer`: no gateway; the writer's own CPU per record (`process_time`), what the writer
child does with each frame replayed in this process (sealing, then storing: SQL, commit,
chain), and what the audit row alone costs SQLite (stdlib `sqlite3`, WAL, synchronous=FULL)
with its three B-trees, fewer indexes, or one marshalled blob per batch instead of rows.
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


# -- the writer alone (--writer) -------------------------------------------------------------

_BATCHES, _BATCH = 40, 500


def _raws() -> list[tuple[object, ...]]:
    """One batch of keep-alive exchange records, as the writer child receives them."""
    from egressguard.audit.events import DecisionEvent
    from egressguard.audit.log import raw_of

    return [raw_of(DecisionEvent(
        time=time.time(), cluster="default", kind="http", host=f"app{i % 1000}.bench.test",
        port=8080, verdict="allow", permitted=True, layer="application",
        rule="application:apps/app1", reason="allowed", policy_version="3f2a",
        phase="exchange", connection_id=f"c{i}", client_address="127.0.0.1",
        method="GET", path="/", bytes_up=120, bytes_down=600, duration_s=0.001))
        for i in range(_BATCH)]


def _sqlite_row_cost(tmp: Path, name: str, indexes: tuple[str, ...], blob: bool) -> float:
    import marshal
    import sqlite3

    from egressguard.audit.log import _COLUMNS

    db = sqlite3.connect(tmp / f"{name}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, data BLOB)" if blob else
               f"CREATE TABLE e (id INTEGER PRIMARY KEY, {', '.join(_COLUMNS)})")
    for column in indexes:
        db.execute(f"CREATE INDEX ix_{column} ON e ({column})")
    one = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    sql = f"INSERT INTO e ({', '.join(_COLUMNS)}) VALUES " + ", ".join([one] * 125)
    cpu = 0.0
    for batch in range(_BATCHES):
        rows = [(*raw[:19], os.urandom(68), batch) for raw in _raws()]
        began = time.process_time()
        db.execute("BEGIN")
        if blob:
            db.execute("INSERT INTO b (data) VALUES (?)", (marshal.dumps(rows, 2),))
        else:
            for at in range(0, len(rows), 125):
                db.execute(sql, [v for row in rows[at:at + 125] for v in row])
        db.execute("COMMIT")
        cpu += time.process_time() - began
    db.close()
    return cpu / (_BATCHES * _BATCH) * 1e6


def writer_cost() -> None:
    import base64

    tmp = Path(tempfile.mkdtemp(prefix="egressguard-bench-writer-"))
    os.environ["EGRESSGUARD_HOME"] = str(tmp)
    os.environ.setdefault("EGRESSGUARD_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    from egressguard.audit.log import AuditLog

    log = AuditLog(f"sqlite:///{tmp / 'audit.db'}", start=False)
    log._resume()
    seal = store = 0.0
    for _ in range(_BATCHES):
        raws = _raws()
        began = time.process_time()
        sealed = log._seal(raws)
        sealed_at = time.process_time()
        log._store(*sealed)
        seal += sealed_at - began
        store += time.process_time() - sealed_at
    log._finish()
    n = _BATCHES * _BATCH
    figures = {"seal_us": seal / n * 1e6, "store_us": store / n * 1e6}
    for name, indexes, blob in (("sqlite_3_btrees_us", ("time", "batch_id"), False),
                                ("sqlite_no_batch_index_us", ("time",), False),
                                ("sqlite_rowid_only_us", (), False),
                                ("sqlite_blob_per_batch_us", (), True)):
        figures[name] = _sqlite_row_cost(tmp, name, indexes, blob)
    for name, value in figures.items():
        print(f"{name:28} {value:6.2f} us CPU per record")
    print(json.dumps({k: round(v, 2) for k, v in figures.items()} | {
        "batches": _BATCHES, "batch": _BATCH, "load": os.getloadavg()[0]}))


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
    parser.add_argument("--writer", action="store_true",
                        help="only the writer's CPU per record: sealing vs storing")
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

    if args.writer:
        writer_cost()
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
