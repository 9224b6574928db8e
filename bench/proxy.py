"""Proxy benchmark: direct vs egressguard vs Squid vs tinyproxy, on loopback, in one run.

    .venv/bin/python bench/proxy.py [--quick] [--rounds N] [--seconds S] [--idle N]
    .venv/bin/python bench/proxy.py --side-by-side /tmp/gw-before/src [--audit] [--names]
        [--workers N]                                                  # A/B CPU/req

Needs `squid`, `tinyproxy`, `wrk`, `unbound` and a C compiler (Debian: `apt-get install
squid tinyproxy wrk unbound build-essential`); the script installs the missing ones with
apt-get when it runs as root. Every load generator is C: `wrk` for HTTP, `bench/bulk.c`
(built here with `cc -O2 -pthread`) for tunnels, which also serves the bulk bytes, so no
figure is capped by a Python loop.

Rows (each proxy on a private port with its own temporary config):

* **direct**: the origins without a proxy;
* **egressguard** (the cheapest path): `serve --no-audit`, IP-literal targets, one network
  rule; **egressguard+audit**: the same with `serve`'s audit log (sealed, written by the
  child writer into SQLite): `audit_cpu_ratio` is the ratio of the two;
* **egressguard default**: `serve`'s default configuration: audit log on, 1,000
  application rules of one name each, requests to random names among them, names resolved
  through a real local DNS server (unbound on 127.0.14.53:53, `--nameserver`);
* **squid** (access log off, IP literals, like the cheapest row), **squid logged**
  (access log on, the default row's 1,000 names as a `dstdomain` ACL, same DNS server,
  same random targets) and **squid logged w2** (the same with `workers 2`);
* **tinyproxy** (IP literals);
* **egressguard w1** / **egressguard w2**: the cheapest row with `--workers 1` (one
  process) and `--workers 2` (two SO_REUSEPORT workers under the parent), no tunnels;
  **egressguard default w1**: the default row in one process (the other egressguard rows
  run `serve`'s default, one worker per core). CPU per request counts the parent and
  every worker (descendants of the `serve` process).

Measured in interleaved rounds (every round visits every row in a fresh random order, so
load drift on a shared machine hits all alike): keep-alive req/s at 64 connections
(`wrk -t2 -c64`), CPU per request (user + system of the proxy and its children from
/proc: the audit writer, Squid's workers), tunnel bulk MiB/s with 1 and 8 streams (C
client), and once per row added p50/p99 at one connection and new connections/s. With
`--idle N`, also the CPU of holding N idle tunnels (egressguard and Squid) for 10 s. The
last line printed is one JSON object of ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"hello, world\n")
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
NAMES = 1000
DNS_ADDRESS = "127.0.14.53"  # port 53 (Squid cannot ask another port); issue 14's address
BENCH = Path(__file__).resolve().parent


# -- tools -------------------------------------------------------------------------------

def ensure_tools() -> None:
    missing = [pkg for pkg, exe in (("squid", "squid"), ("tinyproxy", "tinyproxy"),
                                    ("wrk", "wrk"), ("unbound", "unbound"),
                                    ("build-essential", "cc"))
               if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing tools (hint: apt-get install {' '.join(missing)})")
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def build_bulk(tmp: Path) -> Path:
    exe = tmp / "bulk"
    subprocess.run(["cc", "-O2", "-pthread", "-o", str(exe), str(BENCH / "bulk.c")],
                   check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None,
              timeout: float = 30, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))


# -- origins (own processes) ---------------------------------------------------------------

def _origin_main(http_port: int) -> None:
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

    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(Responder, "127.0.0.1", http_port, backlog=4096))
    loop.run_until_complete(server.serve_forever())



def start_origin() -> tuple[multiprocessing.Process, int]:
    """The keep-alive HTTP origin every row relays to, in its own process, once it
    listens: the process and its port."""
    http_port = free_port()
    origin = multiprocessing.Process(target=_origin_main, args=(http_port,), daemon=True)
    origin.start()
    wait_port(http_port)
    return origin, http_port


def medians(figures: dict[str, list[dict[str, float]]], load_before: tuple[float, ...],
            width: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median CPU µs per request and req/s of each row's rounds, printed after the load
    average (a side-by-side run's summary): (cpu, rps)."""
    cpu = {n: statistics.median(m["cpu_us"] for m in f) for n, f in figures.items()}
    rps = {n: statistics.median(m["rps"] for m in f) for n, f in figures.items()}
    load = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    for n in cpu:
        print(f"{n:{width}} median cpu/req {cpu[n]:6.2f} us   median {rps[n]:9,.0f} req/s")
    return cpu, rps

def start_dns(tmp: Path) -> subprocess.Popen[bytes]:
    """unbound on DNS_ADDRESS:53 answering app<N>.bench.test with 127.0.0.1 (TTL 300)."""
    conf = tmp / "unbound.conf"
    data = "".join(f'  local-data: "app{i}.bench.test. 300 IN A 127.0.0.1"\n'
                   for i in range(NAMES))
    conf.write_text(f"""server:
  interface: {DNS_ADDRESS}
  port: 53
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{tmp}"
  pidfile: "{tmp}/unbound.pid"
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  verbosity: 0
  local-zone: "bench.test." static
{data}""")
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise SystemExit(f"unbound could not listen on {DNS_ADDRESS}:53 (root needed)")
    return proc


# -- proxies -------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    port: int | None                 # proxy port, None = direct
    proc: subprocess.Popen[bytes] | None = None
    names: bool = False              # requests go to random app<N>.bench.test names
    bulk: bool = True                # also measured on tunnels
    runs: list[dict[str, float]] = field(default_factory=list)
    tunnels: dict[int, list[float]] = field(default_factory=dict)
    tunnel_cpu: dict[int, list[float]] = field(default_factory=dict)  # CPU s per GiB
    once: dict[str, float] = field(default_factory=dict)


def _egressguard_policy(tmp: Path, http_port: int, bulk_port: int, names: bool) -> Path:
    policy = tmp / f"egressguard-{'names' if names else 'ip'}.yaml"
    text = f"""restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: bench
    priority: 100
    rules:
      - name: origin
        destinations: [127.0.0.1/32]
        protocols: [TCP]
        ports: ['{bulk_port}'{'' if names else f", '{http_port}'"}]
"""
    if names:
        rules = "".join(f"      - {{name: app{i}, targets: [app{i}.bench.test], "
                        f"protocols: ['http:{http_port}']}}\n" for i in range(NAMES))
        text += f"""trusted_ranges: [127.0.0.0/8]
application_rule_collections:
  - name: apps
    priority: 200
    action: allow
    rules:
{rules}"""
    policy.write_text(text)
    return policy


def start_egressguard(tmp: Path, http_port: int, bulk_port: int, *,
                      audit: bool = False, names: bool = False, name: str = "",
                      src: str = "", extra: tuple[str, ...] = ()) -> Target:
    """`egressguard serve` with a policy file; `names`: the default configuration's
    workload (1,000 application rules, names asked of the local DNS server)."""
    port = free_port()
    policy = _egressguard_policy(tmp, http_port, bulk_port, names)
    exe = Path(sys.executable).parent / "egressguard"
    name = name or ("egressguard+audit" if audit else "egressguard")
    home = tmp / f"home-{name}"
    env = {**os.environ, "EGRESSGUARD_HOME": str(home)}
    if src:  # another checkout's code (an A/B run): its src/ first on the path
        env["PYTHONPATH"] = src
    cmd = [str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--policy", str(policy),
           "--log-level", "warning", "--idle-timeout", "600", "--max-connections", "30000",
           "--max-connections-per-source", "30000", "--no-api",
           "--audit" if audit else "--no-audit", *extra]
    if names:
        cmd += ["--nameserver", DNS_ADDRESS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    wait_port(port, proc, timeout=60)
    return Target(name, port, proc, names=names)


def start_squid(tmp: Path, http_port: int, bulk_port: int, *, name: str = "squid",
                logged: bool = False, names: bool = False, workers: int = 1) -> Target:
    port = free_port()
    work = tmp / name.replace(" ", "-")
    work.mkdir()
    work.chmod(0o777)
    if names:
        (work / "names").write_text("".join(f"app{i}.bench.test\n" for i in range(NAMES)))
        allow = (f'acl apps dstdomain "{work}/names"\nacl app_port port {http_port}\n'
                 "http_access allow apps app_port\n"
                 f"acl origin dst 127.0.0.1/32\nacl bulk port {bulk_port}\n"
                 "http_access allow origin bulk\n"
                 f"dns_nameservers {DNS_ADDRESS}\n")
    else:
        allow = "acl origin dst 127.0.0.1/32\nhttp_access allow origin\n"
    conf = work / "squid.conf"
    conf.write_text(f"""http_port 127.0.0.1:{port}
{allow}http_access deny all
cache deny all
cache_mem 8 MB
{f"access_log stdio:{work}/access.log" if logged else "access_log none"}
cache_store_log none
cache_log {work}/cache.log
pid_filename {work}/squid.pid
coredump_dir {work}
cache_effective_user proxy
shutdown_lifetime 1 seconds
max_filedescriptors 32768
forwarded_for delete
workers {workers}
""")
    exe = shutil.which("squid") or "/usr/sbin/squid"
    # -N: one process that is the worker; --foreground: the master stays in the
    # foreground with its kids (needed for workers > 1).
    args = [exe, "--foreground"] if workers > 1 else [exe, "-N"]
    proc = subprocess.Popen([*args, "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Target(name, port, proc, names=names)


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


def _no_bulk(target: Target) -> Target:
    target.bulk = False
    return target


# -- measurements --------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its descendants (Squid's kids, the audit writer)."""
    parent: dict[str, str] = {}
    ticks: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[stat.parent.name] = fields[1]
        ticks[stat.parent.name] = int(fields[11]) + int(fields[12])
    total = 0
    for p, t in ticks.items():
        q = p
        while q in parent and q != str(pid) and q != "1":
            q = parent[q]
        if q == str(pid):
            total += t
    return total / os.sysconf("SC_CLK_TCK")


def tunnel_throughput(bulk: Path, target: Target, bulk_port: int, total: int,
                      streams: int) -> tuple[float, float]:
    """(bytes/s downloaded through `streams` tunnels carrying `total` bytes together, the
    proxy's CPU seconds per GiB relayed)."""
    cpu0 = _cpu_seconds(target.proc.pid) if target.proc else 0.0
    out = subprocess.run([str(bulk), "get", str(bulk_port), str(target.port or 0),
                          str(total), str(streams)],
                         capture_output=True, text=True, check=True, timeout=300)
    cpu = _cpu_seconds(target.proc.pid) - cpu0 if target.proc else 0.0
    return float(out.stdout.strip()), cpu / (total / (1 << 30))


def _wrk_script(target: Target, http_port: int, tmp: Path, close: bool,
                headers: dict[str, str] | None = None) -> Path:
    script = tmp / f"wrk-{target.name.replace(' ', '-')}-{int(close)}.lua"
    # Headers for every request (e.g. Proxy-Authorization, bench/identity.py).
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    if target.names:
        hdr = ', Connection = "close"' if close else ""
        lines += [
            "math.randomseed(os.time())",
            "request = function()",
            f"  local h = 'app' .. math.random(0, {NAMES - 1}) .. '.bench.test:{http_port}'",
            f"  return wrk.format('GET', 'http://' .. h .. '/', {{Host = h{hdr}}})",
            "end"]
    else:
        origin = f"127.0.0.1:{http_port}"
        if target.port is not None:
            lines += [f'wrk.path = "http://{origin}/"', f'wrk.headers["Host"] = "{origin}"']
        if close:
            lines.append('wrk.headers["Connection"] = "close"')
    script.write_text("\n".join(lines) + "\n")
    return script


def _wrk(target: Target, http_port: int, tmp: Path, conns: int, seconds: float,
         close: bool = False, headers: dict[str, str] | None = None) -> dict[str, float]:
    script = _wrk_script(target, http_port, tmp, close, headers)
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
    return {"rps": rps, "requests": total, "cpu_s": cpu,
            "p50_us": lat.get("50", 0.0), "p99_us": lat.get("99", 0.0),
            "cpu_us": cpu / total * 1e6 if total else 0.0}


def _micros(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def idle_cpu(bulk: Path, target: Target, http_port: int, count: int) -> float:
    """% of one core the proxy spends while holding `count` idle tunnels (10 s window)."""
    holder = subprocess.Popen([str(bulk), "hold", str(http_port), str(target.port),
                               str(count), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{target.name}: could not open {count} tunnels")
        time.sleep(2)
        assert target.proc is not None
        cpu0, t0 = _cpu_seconds(target.proc.pid), time.monotonic()
        time.sleep(10)
        return (_cpu_seconds(target.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
    finally:
        holder.terminate()
        holder.wait(10)


# -- main ------------------------------------------------------------------------------------

def side_by_side(before_src: str, rounds: int, seconds: int, conns: int,
                 audit: bool = False, names: bool = False, workers: int | None = None) -> None:
    """CPU per keep-alive request of two gateways at once (this checkout's and the code
    in `before_src`, e.g. a `git worktree` of the starting commit), against one origin,
    in interleaved `wrk` rounds (order alternating), so load on a shared machine falls
    on both alike (`audit`: both with `serve`'s audit log, the writer child counted;
    `names`: the default configuration's workload, 1,000 one-name rules and random names
    resolved through unbound; `workers`: `serve --workers N`, default one per core).
    Prints per-round figures, then medians and the ratio."""
    origin, http_port = start_origin()
    bulk_port = free_port()
    load_before = os.getloadavg()
    extra = ("--workers", str(workers)) if workers else ()
    with tempfile.TemporaryDirectory(prefix="egressguard-ab-") as tmpdir:
        tmp = Path(tmpdir)
        dns = start_dns(tmp) if names else None
        targets = [start_egressguard(tmp, http_port, bulk_port, name="before", src=before_src,
                                     audit=audit, names=names, extra=extra),
                   start_egressguard(tmp, http_port, bulk_port, name="after", audit=audit,
                                     names=names, extra=extra)]
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
            if dns is not None:
                dns.terminate()
                dns.wait(10)
    origin.terminate()
    cpu, rps = medians(figures, load_before, 7)
    print(json.dumps({"cpu_us_before": round(cpu["before"], 2),
                      "cpu_us_after": round(cpu["after"], 2),
                      "cpu_ratio": round(cpu["after"] / cpu["before"], 4),
                      "rps_ratio": round(rps["after"] / rps["before"], 4),
                      "p99_us_before": statistics.median(m["p99_us"] for m in figures["before"]),
                      "p99_us_after": statistics.median(m["p99_us"] for m in figures["after"]),
                      "audit": audit, "names": names, "workers": workers, "rounds": rounds,
                      "seconds": seconds, "conns": conns}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 2 s runs, 256 MiB tunnels (a few minutes)")
    parser.add_argument("--side-by-side", metavar="BEFORE_SRC",
                        help="only CPU per keep-alive request: this checkout against the "
                             "code in BEFORE_SRC (a src/ directory), interleaved rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--idle", type=int, default=None,
                        help="idle tunnels to hold for the idle-CPU figure (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated rows to run")
    parser.add_argument("--audit", action="store_true",
                        help="with --side-by-side: both gateways with the audit log on")
    parser.add_argument("--names", action="store_true",
                        help="with --side-by-side: the default configuration's workload "
                             "(1,000 one-name rules, random names resolved through unbound)")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --side-by-side: serve --workers N (default: one per core)")
    args = parser.parse_args()
    if args.side_by_side:
        if args.names:
            ensure_tools()
        side_by_side(args.side_by_side, args.rounds or 9, args.seconds or 4, args.conns,
                     args.audit, args.names, args.workers)
        return
    ensure_tools()
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (2 if args.quick else 5)
    total = 256 * MiB if args.quick else 1024 * MiB
    idle = args.idle if args.idle is not None else (2000 if args.quick else 10000)
    raise_fd_limit(2 * idle + 4096)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if idle and 2 * idle + 500 > hard:  # the proxy holds two descriptors per tunnel
        idle = (hard - 500) // 2
        print(f"idle tunnels capped at {idle} by the hard descriptor limit ({hard})")
    load_before = os.getloadavg()
    wanted = {s for s in args.only.split(",") if s}

    origin, http_port = start_origin()
    bulk_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="egressguard-bench-") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        try:
            bulk = build_bulk(tmp)
            procs.append(subprocess.Popen([str(bulk), "serve", str(bulk_port)]))
            procs.append(start_dns(tmp))
            wait_port(http_port)
            wait_port(bulk_port)
            starters = {
                "direct": lambda: Target("direct", None),
                "egressguard": lambda: start_egressguard(tmp, http_port, bulk_port),
                "egressguard+audit": lambda: start_egressguard(tmp, http_port, bulk_port,
                                                               audit=True),
                "egressguard default": lambda: start_egressguard(
                    tmp, http_port, bulk_port, audit=True, names=True,
                    name="egressguard default"),
                "squid": lambda: start_squid(tmp, http_port, bulk_port),
                "squid logged": lambda: start_squid(tmp, http_port, bulk_port,
                                                    name="squid logged", logged=True,
                                                    names=True),
                "squid logged w2": lambda: start_squid(tmp, http_port, bulk_port,
                                                       name="squid logged w2", logged=True,
                                                       names=True, workers=2),
                "tinyproxy": lambda: start_tinyproxy(tmp, bulk_port),
                # `serve --workers` (default: one per core) against one process.
                "egressguard w1": lambda: _no_bulk(start_egressguard(
                    tmp, http_port, bulk_port, name="egressguard w1",
                    extra=("--workers", "1"))),
                "egressguard w2": lambda: _no_bulk(start_egressguard(
                    tmp, http_port, bulk_port, name="egressguard w2",
                    extra=("--workers", "2"))),
                "egressguard default w1": lambda: start_egressguard(
                    tmp, http_port, bulk_port, audit=True, names=True,
                    name="egressguard default w1", extra=("--workers", "1")),
            }
            for name, start in starters.items():
                if wanted and name not in wanted:
                    continue
                try:
                    targets.append(start())
                except Exception as exc:  # a competitor failing must not hide the others
                    print(f"   {name} did not start: {exc}", flush=True)
            for target in targets:  # warm-up (imports, caches, DNS), not counted
                _wrk(target, http_port, tmp, args.conns, 1)
            for round_no in range(rounds):
                order = targets[:]
                random.shuffle(order)
                for target in order:
                    m = _wrk(target, http_port, tmp, args.conns, seconds)
                    target.runs.append(m)
                    line = f"round {round_no} {target.name:20} {m['rps']:9,.0f} req/s " \
                           f"{m['cpu_us']:6.1f} us/req"
                    if not target.names and target.bulk:
                        for streams in (1, 8):
                            bps, cpu = tunnel_throughput(bulk, target, bulk_port, total,
                                                         streams)
                            target.tunnels.setdefault(streams, []).append(bps)
                            target.tunnel_cpu.setdefault(streams, []).append(cpu)
                            line += f"  x{streams} {bps / MiB:7,.0f} MiB/s"
                    print(line, flush=True)
            for target in targets:
                one = _wrk(target, http_port, tmp, 1, seconds)
                target.once["p50_us"], target.once["p99_us"] = one["p50_us"], one["p99_us"]
                target.once["conn_per_s"] = _wrk(target, http_port, tmp, 16, seconds,
                                                 close=True)["rps"]
                if idle and target.name in ("egressguard", "squid"):
                    target.once["idle_cpu_pct"] = idle_cpu(bulk, target, http_port, idle)
                print(f"{target.name:20} " + "  ".join(
                    f"{k}={v:,.1f}" for k, v in target.once.items()), flush=True)
        finally:
            for target in targets:
                if target.proc is not None:
                    target.proc.terminate()
            for proc in procs:
                proc.terminate()
            for p in [t.proc for t in targets if t.proc is not None] + procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            origin.terminate()
    _report(targets, load_before, os.getloadavg(), rounds, seconds, args.quick, idle)


def _report(targets: list[Target], before: tuple[float, float, float],
            after: tuple[float, float, float], rounds: int, seconds: int, quick: bool,
            idle: int) -> None:
    rows: dict[str, dict[str, float]] = {}
    for t in targets:
        r: dict[str, float] = {}
        if t.runs:
            r["rps"] = statistics.median(m["rps"] for m in t.runs)
            requests = sum(m["requests"] for m in t.runs)
            r["cpu_us"] = sum(m["cpu_s"] for m in t.runs) / requests * 1e6 if requests else 0
        for streams, values in t.tunnels.items():
            r[f"tunnel_{streams}_MiBps"] = statistics.median(values) / MiB
            if t.proc is not None:
                r[f"tunnel_{streams}_cpu_ms_per_GiB"] = \
                    statistics.median(t.tunnel_cpu[streams]) * 1e3
        r.update(t.once)
        rows[t.name] = r
    print(f"\nload average before {before[0]:.2f}, after {after[0]:.2f} "
          f"({os.cpu_count()} CPUs, shared machine); {rounds} interleaved rounds of "
          f"{seconds} s; medians of rounds, CPU per request over all rounds")
    print(f"{'':22}{'req/s c64':>11}{'CPU/req':>10}{'tunnel x1':>14}{'tunnel x8':>14}"
          f"{'p50':>9}{'p99':>9}{'conn/s':>9}{'idle CPU':>10}")
    direct = rows.get("direct", {})
    for name, r in rows.items():
        d50 = r.get("p50_us", 0.0) - (direct.get("p50_us", 0.0) if name != "direct" else 0)
        d99 = r.get("p99_us", 0.0) - (direct.get("p99_us", 0.0) if name != "direct" else 0)
        t1, t8 = r.get("tunnel_1_MiBps"), r.get("tunnel_8_MiBps")
        idle_pct = r.get("idle_cpu_pct")
        print(f"{name:22}{r.get('rps', 0):>11,.0f}{r.get('cpu_us', 0):>8,.0f}us"
              f"{f'{t1:,.0f}MiB/s' if t1 else '-':>14}{f'{t8:,.0f}MiB/s' if t8 else '-':>14}"
              f"{d50:>7,.0f}us{d99:>7,.0f}us{r.get('conn_per_s', 0):>9,.0f}"
              f"{f'{idle_pct:.2f}%' if idle_pct is not None else '-':>10}")
    print("(p50/p99: added to direct's at one connection; idle CPU: % of a core holding "
          f"{idle} idle tunnels)")
    for name, r in rows.items():
        if "tunnel_1_cpu_ms_per_GiB" in r:
            print(f"{name:22}tunnel CPU per GiB relayed: x1 {r['tunnel_1_cpu_ms_per_GiB']:,.0f} "
                  f"ms, x8 {r['tunnel_8_cpu_ms_per_GiB']:,.0f} ms")

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = rows.get(a, {}).get(key), rows.get(b, {}).get(key)
        return round(x / y, 3) if x and y else None

    eg, audit, default = "egressguard", "egressguard+audit", "egressguard default"
    summary = {
        "quick": quick, "rounds": rounds, "seconds": seconds,
        "default_rps_vs_squid_logged": ratio(default, "squid logged", "rps"),
        "default_cpu_per_req_vs_squid_logged": ratio(default, "squid logged", "cpu_us"),
        "default_rps_vs_squid_logged_w2": ratio(default, "squid logged w2", "rps"),
        "default_cpu_per_req_vs_squid_logged_w2": ratio(default, "squid logged w2", "cpu_us"),
        "workers2_rps_vs_1": ratio("egressguard w2", "egressguard w1", "rps"),
        "workers2_cpu_per_req_vs_1": ratio("egressguard w2", "egressguard w1", "cpu_us"),
        "default_rps_vs_default_w1": ratio(default, "egressguard default w1", "rps"),
        "default_cpu_per_req_vs_default_w1": ratio(default, "egressguard default w1",
                                                   "cpu_us"),
        "audit_cpu_ratio": ratio(audit, eg, "cpu_us"),
        "audit_rps_ratio": ratio(audit, eg, "rps"),
        "tunnel_vs_direct_c": ratio(eg, "direct", "tunnel_1_MiBps"),
        "tunnel8_vs_direct_c": ratio(eg, "direct", "tunnel_8_MiBps"),
        "tunnel_vs_squid_c": ratio(eg, "squid", "tunnel_1_MiBps"),
        "tunnel8_vs_squid_c": ratio(eg, "squid", "tunnel_8_MiBps"),
        "tunnel_cpu_per_GiB_vs_squid": ratio(eg, "squid", "tunnel_1_cpu_ms_per_GiB"),
        "tunnel8_cpu_per_GiB_vs_squid": ratio(eg, "squid", "tunnel_8_cpu_ms_per_GiB"),
        "rps_vs_squid": ratio(eg, "squid", "rps"),
        "cpu_per_req_vs_squid": ratio(eg, "squid", "cpu_us"),
        "cps_vs_squid": ratio(eg, "squid", "conn_per_s"),
        "idle_cpu_pct": round(rows[eg]["idle_cpu_pct"], 2)
        if "idle_cpu_pct" in rows.get(eg, {}) else None,
        "idle_tunnels": idle,
        "load_before": round(before[0], 2),
        "load_after": round(after[0], 2),
        "results": {k: {m: round(v, 1) for m, v in r.items()} for k, r in rows.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
