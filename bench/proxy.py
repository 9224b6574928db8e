"""Proxy benchmark: direct vs egressguard vs Squid vs tinyproxy, on loopback, in one run.

    .venv/bin/python bench/proxy.py [--quick]
    .venv/bin/python bench/proxy.py --side-by-side /tmp/gw-before/src   # A/B CPU per request

Installs `squid`, `tinyproxy` and `wrk` with apt-get when missing, starts each proxy on a
private port with its own temporary config allowing exactly the benchmark origin
(127.0.0.1/32), and measures:

* CONNECT bulk throughput: one tunnel, and 32 parallel tunnels (download direction);
* HTTP keep-alive requests/s with 64 concurrent clients (`wrk`), best of three runs;
* added latency per request, p50/p99, at one sequential client (`wrk -c1`), minus direct;
* new connections/s (`wrk` with `Connection: close`);
* the proxy's CPU time per keep-alive request (user + system, the proxy process and its
  children, from /proc), which a shared machine disturbs far less than requests/s.

egressguard runs twice: without an audit log (like Squid's `access_log none`) and with
it (`serve`'s default: every decision sealed and written by a child process).

Load generators: `wrk` (C) for HTTP; Python blocking sockets (threads, 1 MiB recv_into)
for tunnels. Origins run in their own process (uvloop HTTP responder, threaded bulk
sender). The last line printed is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"hello, world\n")
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


# -- tools -------------------------------------------------------------------------------

def ensure_tools() -> None:
    missing = [pkg for pkg, exe in (("squid", "squid"), ("tinyproxy", "tinyproxy"),
                                    ("wrk", "wrk"))
               if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None,
              timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


# -- origins (own process) ---------------------------------------------------------------

def _origin_main(http_port: int, bulk_port: int) -> None:
    import asyncio

    import uvloop

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            n = self.buf.count(b"\r\n\r\n")
            if not n:
                return
            close = b"onnection: close" in self.buf
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            if close:
                self.t.write(CLOSE_RESPONSE)  # type: ignore[attr-defined]
                self.t.close()
            else:
                self.t.write(RESPONSE * n)  # type: ignore[attr-defined]

    def bulk_server() -> None:
        block = memoryview(b"\x5a" * MiB)
        srv = socket.create_server(("127.0.0.1", bulk_port), backlog=256)

        def handle(conn: socket.socket) -> None:
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
                line = b""
                while not line.endswith(b"\n"):
                    chunk = conn.recv(64)
                    if not chunk:
                        return
                    line += chunk
                left = int(line)
                try:
                    while left > 0:
                        piece = block[:min(left, MiB)]
                        conn.sendall(piece)
                        left -= len(piece)
                except OSError:
                    return

        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=bulk_server, daemon=True).start()
    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(Responder, "127.0.0.1", http_port, backlog=1024))
    loop.run_until_complete(server.serve_forever())


# -- proxies -------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    port: int | None                 # proxy port, None = direct
    proc: subprocess.Popen[bytes] | None = None


def start_egressguard(tmp: Path, http_port: int, bulk_port: int, *,
                      audit: bool = False, name: str = "", src: str = "") -> Target:
    """`egressguard serve` with the policy file; like Squid's `access_log none` unless
    `audit` (then every decision goes to the audit log, as `serve` does by default)."""
    port = free_port()
    policy = tmp / "egressguard.yaml"
    policy.write_text(f"""restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: bench
    priority: 100
    rules:
      - name: origin
        destinations: [127.0.0.1/32]
        protocols: [TCP]
        ports: ['{http_port}', '{bulk_port}']
""")
    exe = Path(sys.executable).parent / "egressguard"
    name = name or ("egressguard+audit" if audit else "egressguard")
    home = tmp / f"home-{name}"
    env = {**os.environ, "EGRESSGUARD_HOME": str(home)}
    if src:  # another checkout's code (an A/B run): its src/ first on the path
        env["PYTHONPATH"] = src
    proc = subprocess.Popen([str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--policy",
                             str(policy), "--log-level", "warning", "--idle-timeout", "600",
                             "--max-connections", "20000", "--no-api",
                             "--audit" if audit else "--no-audit"],
                            stdout=subprocess.DEVNULL, env=env)
    wait_port(port, proc, timeout=60)
    return Target(name, port, proc)


def start_squid(tmp: Path) -> Target:
    port = free_port()
    work = tmp / "squid"
    work.mkdir()
    work.chmod(0o777)
    conf = work / "squid.conf"
    conf.write_text(f"""http_port 127.0.0.1:{port}
acl origin dst 127.0.0.1/32
http_access allow origin
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {work}/cache.log
pid_filename {work}/squid.pid
coredump_dir {work}
cache_effective_user proxy
shutdown_lifetime 1 seconds
max_filedescriptors 16384
forwarded_for delete
""")
    exe = shutil.which("squid") or "/usr/sbin/squid"
    proc = subprocess.Popen([exe, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Target("squid", port, proc)


def start_tinyproxy(tmp: Path, bulk_port: int) -> Target:
    port = free_port()
    work = tmp / "tinyproxy"
    work.mkdir()
    work.chmod(0o777)
    (work / "filter").write_text("^127\\.0\\.0\\.1$\n")
    conf = work / "tinyproxy.conf"
    conf.write_text(f"""User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 4096
Allow 127.0.0.1
Filter "{work}/filter"
FilterDefaultDeny Yes
FilterExtended On
ConnectPort {bulk_port}
LogLevel Critical
DisableViaHeader Yes
""")
    exe = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Target("tinyproxy", port, proc)


# -- measurements --------------------------------------------------------------------------

def _open_bulk(target: Target, bulk_port: int) -> socket.socket:
    if target.port is None:
        sock = socket.create_connection(("127.0.0.1", bulk_port))
    else:
        sock = socket.create_connection(("127.0.0.1", target.port))
        authority = f"127.0.0.1:{bulk_port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise RuntimeError(f"{target.name}: tunnel closed: {head!r}")
            head += chunk
        if b" 200" not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"{target.name}: CONNECT refused: {head!r}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
    return sock


def _download(sock: socket.socket, total: int) -> None:
    buf = bytearray(MiB)
    view = memoryview(buf)
    with sock:
        sock.sendall(f"{total}\n".encode())
        left = total
        while left:
            n = sock.recv_into(view)
            if not n:
                raise RuntimeError("tunnel closed early")
            left -= n


def tunnel_throughput(target: Target, bulk_port: int, total: int, streams: int) -> float:
    """Bytes/s downloaded through `streams` tunnels carrying `total` bytes together."""
    socks = [_open_bulk(target, bulk_port) for _ in range(streams)]
    each = total // streams
    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda s: _download(s, each), socks))
    return each * streams / (time.perf_counter() - start)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its direct children (Squid's, the audit writer)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _wrk(target: Target, http_port: int, tmp: Path, conns: int, seconds: float,
         close: bool = False, headers: dict[str, str] | None = None) -> dict[str, float]:
    origin = f"127.0.0.1:{http_port}"
    script = tmp / f"wrk-{target.name}.lua"
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    if target.port is not None:
        lines += [f'wrk.path = "http://{origin}/"', f'wrk.headers["Host"] = "{origin}"']
    if close:
        lines.append('wrk.headers["Connection"] = "close"')
    script.write_text("\n".join(lines) + "\n")
    url = f"http://127.0.0.1:{target.port or http_port}/"
    threads = 1 if conns < 2 else 2
    cpu0 = _cpu_seconds(target.proc.pid) if target.proc else 0.0
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
                          "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    cpu = _cpu_seconds(target.proc.pid) - cpu0 if target.proc else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{target.name}: {errors.group(0)}\n{out}")
    lat = {p: _micros(v) for p, v in re.findall(r"\n\s+(50|99)%\s+([\d.]+\w+)", out)}
    return {"rps": rps, "p50_us": lat.get("50", 0.0), "p99_us": lat.get("99", 0.0),
            "cpu_us": cpu / total * 1e6 if total else 0.0}


def _micros(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


# -- main ------------------------------------------------------------------------------------

def side_by_side(before_src: str, rounds: int, seconds: int, conns: int) -> None:
    """CPU per keep-alive request of two gateways at once (this checkout's and the code
    in `before_src`, e.g. a `git worktree` of the starting commit), against one origin,
    in interleaved `wrk` rounds (order alternating), so load on a shared machine falls
    on both alike. Prints per-round figures, then medians and the ratio."""
    import statistics

    http_port, bulk_port = free_port(), free_port()
    origin = multiprocessing.Process(target=_origin_main, args=(http_port, bulk_port),
                                     daemon=True)
    origin.start()
    wait_port(http_port)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="egressguard-ab-") as tmpdir:
        tmp = Path(tmpdir)
        targets = [start_egressguard(tmp, http_port, bulk_port, name="before", src=before_src),
                   start_egressguard(tmp, http_port, bulk_port, name="after")]
        figures: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        try:
            for target in targets:  # warm-up, not counted
                _wrk(target, http_port, tmp, conns, 1)
            for round_no in range(rounds):
                for target in targets if round_no % 2 == 0 else targets[::-1]:
                    m = _wrk(target, http_port, tmp, conns, seconds)
                    figures[target.name].append(m)
                    print(f"round {round_no} {target.name:7} cpu/req {m['cpu_us']:6.1f} us  "
                          f"{m['rps']:9,.0f} req/s", flush=True)
        finally:
            for target in targets:
                assert target.proc is not None
                target.proc.terminate()
                target.proc.wait(10)
    origin.terminate()
    cpu = {n: statistics.median(m["cpu_us"] for m in f) for n, f in figures.items()}
    rps = {n: statistics.median(m["rps"] for m in f) for n, f in figures.items()}
    load = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    for n in cpu:
        print(f"{n:7} median cpu/req {cpu[n]:6.2f} us   median {rps[n]:9,.0f} req/s")
    print(json.dumps({"cpu_us_before": round(cpu["before"], 2),
                      "cpu_us_after": round(cpu["after"], 2),
                      "cpu_ratio": round(cpu["after"] / cpu["before"], 4),
                      "rps_ratio": round(rps["after"] / rps["before"], 4),
                      "rounds": rounds, "seconds": seconds, "conns": conns}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes, 2 s runs (~90 s)")
    parser.add_argument("--side-by-side", metavar="BEFORE_SRC",
                        help="only CPU per keep-alive request: this checkout against the "
                             "code in BEFORE_SRC (a src/ directory), interleaved rounds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--conns", type=int, default=64)
    args = parser.parse_args()
    if args.side_by_side:
        side_by_side(args.side_by_side, args.rounds, args.seconds, args.conns)
        return
    ensure_tools()
    single_total = 256 * MiB if args.quick else GiB
    parallel_total = 256 * MiB if args.quick else GiB
    seconds = 2 if args.quick else 8
    load_before = os.getloadavg()

    http_port, bulk_port = free_port(), free_port()
    origin = multiprocessing.Process(target=_origin_main, args=(http_port, bulk_port),
                                     daemon=True)
    origin.start()
    wait_port(http_port)
    wait_port(bulk_port)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="egressguard-bench-") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        starters: list[tuple[str, Callable[[], Target]]] = [
            ("direct", lambda: Target("direct", None)),
            ("egressguard", lambda: start_egressguard(tmp, http_port, bulk_port)),
            ("egressguard+audit",
             lambda: start_egressguard(tmp, http_port, bulk_port, audit=True)),
            ("squid", lambda: start_squid(tmp)),
            ("tinyproxy", lambda: start_tinyproxy(tmp, bulk_port)),
        ]
        for name, start in starters:
            target = start()
            try:
                print(f"-- {name}", flush=True)
                r: dict[str, float] = {}
                r["tunnel_1_MiBps"] = tunnel_throughput(
                    target, bulk_port, single_total, 1) / MiB
                r["tunnel_32_MiBps"] = tunnel_throughput(
                    target, bulk_port, parallel_total, 32) / MiB
                # Best of three: other jobs on a shared machine only ever slow a run down.
                keep = max((_wrk(target, http_port, tmp, 64, seconds) for _ in range(3)),
                           key=lambda m: m["rps"])
                r["rps_64"] = keep["rps"]
                r["cpu_us_per_req"] = keep["cpu_us"]
                one = _wrk(target, http_port, tmp, 1, seconds)
                r["p50_us"], r["p99_us"] = one["p50_us"], one["p99_us"]
                r["conn_per_s"] = _wrk(target, http_port, tmp, 16, seconds, close=True)["rps"]
                results[name] = r
                print("   " + "  ".join(f"{k}={v:,.1f}" for k, v in r.items()), flush=True)
            except Exception as exc:  # a competitor failing must not hide the others
                print(f"   {name} failed: {exc}", flush=True)
            finally:
                if target.proc is not None:
                    target.proc.terminate()
                    try:
                        target.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        target.proc.kill()
    origin.terminate()
    _report(results, load_before, os.getloadavg(), args.quick)


def _report(results: dict[str, dict[str, float]], before: tuple[float, float, float],
            after: tuple[float, float, float], quick: bool) -> None:
    direct = results.get("direct", {})
    squid = results.get("squid", {})
    print(f"\nload average before {before[0]:.2f}, after {after[0]:.2f} "
          f"({os.cpu_count()} CPUs, shared machine)")
    header = f"{'':18}{'tunnel x1':>14}{'tunnel x32':>14}{'req/s c64':>12}" \
             f"{'CPU/req':>10}{'added p50':>11}{'added p99':>11}{'conn/s':>10}"
    print(header)
    for name, r in results.items():
        added50 = r["p50_us"] - direct.get("p50_us", 0.0)
        added99 = r["p99_us"] - direct.get("p99_us", 0.0)
        print(f"{name:18}{r['tunnel_1_MiBps']:>10,.0f}MiB/s{r['tunnel_32_MiBps']:>9,.0f}MiB/s"
              f"{r['rps_64']:>12,.0f}{r['cpu_us_per_req']:>8,.0f}us"
              f"{added50:>9,.0f}us{added99:>9,.0f}us"
              f"{r['conn_per_s']:>10,.0f}")
    for ref_name, ref in (("direct", direct), ("squid", squid)):
        if not ref:
            continue
        print(f"ratios to {ref_name}:")
        for name, r in results.items():
            if name == ref_name:
                continue
            print(f"  {name:18} " + "  ".join(
                f"{k}={r[k] / ref[k]:.2f}" for k in
                ("tunnel_1_MiBps", "tunnel_32_MiBps", "rps_64", "conn_per_s") if ref.get(k)))
    eg = results.get("egressguard", {})
    audited = results.get("egressguard+audit", {})

    def ratio(a: dict[str, float], b: dict[str, float], key: str) -> float | None:
        return round(a[key] / b[key], 3) if a.get(key) and b.get(key) else None

    summary = {
        "quick": quick,
        "tunnel_vs_direct": ratio(eg, direct, "tunnel_1_MiBps"),
        "tunnel32_vs_direct": ratio(eg, direct, "tunnel_32_MiBps"),
        "tunnel_vs_squid": ratio(eg, squid, "tunnel_1_MiBps"),
        "tunnel32_vs_squid": ratio(eg, squid, "tunnel_32_MiBps"),
        "rps_vs_squid": ratio(eg, squid, "rps_64"),
        "cps_vs_squid": ratio(eg, squid, "conn_per_s"),
        "cpu_per_req_vs_squid": ratio(eg, squid, "cpu_us_per_req"),
        "audit_rps_vs_squid": ratio(audited, squid, "rps_64"),
        "audit_cpu_per_req_vs_squid": ratio(audited, squid, "cpu_us_per_req"),
        "added_p50_us": round(eg["p50_us"] - direct["p50_us"], 1) if eg and direct else None,
        "added_p99_us": round(eg["p99_us"] - direct["p99_us"], 1) if eg and direct else None,
        "load_before": round(before[0], 2),
        "load_after": round(after[0], 2),
        "results": {k: {m: round(v, 1) for m, v in r.items()} for k, r in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
