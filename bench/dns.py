"""DNS filter benchmark: `.venv/bin/python bench/dns.py [--quick]` (docs/benchmarks.md).

Side by side, with the same allow/deny lists (`*.example.com` allowed, everything else
refused with NXDOMAIN), in front of one real upstream (unbound on a loopback port answering
every `*.example.com` name from local-data, so no internet is needed):

* dnsmasq: `--server=/example.com/UPSTREAM` and `--address=/#/` (NXDOMAIN for the rest),
  `--cache-size=0` (a forwarding filter, like egressguard);
* unbound: `local-zone: "." always_nxdomain`, `example.com` transparent and forwarded to the
  upstream, `cache-max-ttl: 0` (forwarding, not answering from its own cache);
* egressguard `dns serve` in its default configuration (audit log on, to an SQLite store)
  and with `--no-audit`; with `--against SRC`, the same two again from another source
  tree (`egressguard_before`, `egressguard_noaudit_before`: e.g. the tree before a change,
  `git archive COMMIT src | tar -x -C /tmp/before`), in the same interleaved rounds.

The load generator is dnsperf (C; Debian `dnsperf`), 100 outstanding queries over UDP,
2,000 distinct names per path. Servers run in interleaved rounds (each round visits every
server in a fresh random order) so load drift on a shared machine hits all alike. The
steadiest figure is CPU per answered query, read from /proc for each server process and
its descendants (egressguard's audit writer; the `self` column is the server process
alone). The last line of output is one JSON object of ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMES = 2000
ADDRESS = "93.184.216.34"  # a public address the address guard lets through
POLICY = """\
restrict_outbound_network_access: true
application_rule_collections:
  - name: allowed
    priority: 200
    action: allow
    rules:
      - {name: example, targets: ['*.example.com'], protocols: ['https:443']}
"""


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _unbound_conf(port: int, tmp: Path, body: str) -> str:
    return f"""server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{tmp}"
  pidfile: "{tmp}/unbound-{port}.pid"
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: no
  verbosity: 0
  so-reuseport: no
{body}"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (and its reaped children) so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Live children of every thread of `pid` (the audit writer is forked by a thread of
    the filter, not its main thread, so the main thread's list alone misses it)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def _tree_cpu(pid: int) -> float:
    """CPU of `pid` and its live descendants (the audit writer is a child process)."""
    total = _cpu_seconds(pid)
    for child in _children(pid):
        with contextlib.suppress(OSError, ValueError):
            total += _tree_cpu(child)
    return total


def _dig(port: int, name: str, timeout: float = 0.5) -> bytes | None:
    qid = random.randrange(65536)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels \
        + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return None
    return data if data[:2] == packet[:2] else None


def _wait_ready(port: int, name: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited ({proc.returncode})")
        if _dig(port, name) is not None:
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing answers on port {port}")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    qps: dict[str, list[float]] = field(default_factory=lambda: {"allowed": [], "denied": []})
    cpu: dict[str, float] = field(default_factory=lambda: {"allowed": 0.0, "denied": 0.0})
    own: dict[str, float] = field(default_factory=lambda: {"allowed": 0.0, "denied": 0.0})
    done: dict[str, int] = field(default_factory=lambda: {"allowed": 0, "denied": 0})
    lost: dict[str, int] = field(default_factory=lambda: {"allowed": 0, "denied": 0})


def _dnsperf(port: int, datafile: Path, seconds: float) -> tuple[int, int, float]:
    """(completed, lost, q/s) of one dnsperf run against 127.0.0.1:`port`."""
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile),
         "-l", str(seconds), "-q", "100", "-t", "2", "-c", "4"],
        capture_output=True, text=True, check=False).stdout
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    codes = re.search(r"Response codes:\s+(.*)", out)
    if not (completed and lost and qps and codes):
        raise SystemExit(f"dnsperf output not understood:\n{out}")
    want = "NOERROR" if "allowed" in datafile.name else "NXDOMAIN"
    if not codes.group(1).startswith(f"{want} ") or "," in codes.group(1):
        raise SystemExit(f"port {port}: {datafile.name} answered {codes.group(1)}, not {want}")
    return int(completed.group(1)), int(lost.group(1)), float(qps.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per server, path, round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    parser.add_argument("--only", default="", help="comma-separated servers to run")
    parser.add_argument("--against", metavar="SRC",
                        help="also run egressguard from this source tree (a src/ directory), "
                             "interleaved: rows *_before, keys before_* and *_vs_before")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 2.0
    for tool in ("dnsperf", "unbound", "dnsmasq"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed (hint: apt-get install {tool})")

    tmp = Path(tempfile.mkdtemp(prefix="egressguard-dnsbench-"))
    files = {
        "allowed": tmp / "allowed.txt", "denied": tmp / "denied.txt"}
    files["allowed"].write_text("".join(f"h{i}.example.com A\n" for i in range(NAMES)))
    files["denied"].write_text("".join(f"h{i}.denied.test A\n" for i in range(NAMES)))
    (tmp / "policy.yaml").write_text(POLICY)

    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        procs.append(proc)
        return proc

    servers: list[Server] = []
    try:
        up_port = _free_port()
        (tmp / "upstream.conf").write_text(_unbound_conf(up_port, tmp, f"""\
  local-zone: "example.com." redirect
  local-data: "example.com. 300 IN A {ADDRESS}"
  local-zone: "." always_nxdomain
"""))
        upstream = spawn(["unbound", "-d", "-c", str(tmp / "upstream.conf")])
        _wait_ready(up_port, "h1.example.com", upstream)

        wanted = {s for s in args.only.split(",") if s}

        def add(name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
            if wanted and name not in wanted:
                return
            port = _free_port()
            cmd = [c.replace("@PORT", str(port)) for c in cmd]
            proc = spawn(cmd, env)
            _wait_ready(port, "h1.example.com", proc)
            servers.append(Server(name, port, proc))

        add("dnsmasq", ["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=@PORT",
                        "--listen-address=127.0.0.1", "--bind-interfaces", "--cache-size=0",
                        f"--server=/example.com/127.0.0.1#{up_port}", "--address=/#/",
                        f"--pid-file={tmp}/dnsmasq.pid", "--user=root", "--group=root",
                        "--dns-forward-max=1000"])
        ub_port_conf = tmp / "filter.conf"

        if not wanted or "unbound" in wanted:
            port = _free_port()
            ub_port_conf.write_text(_unbound_conf(port, tmp, f"""\
  cache-max-ttl: 0
  local-zone: "." always_nxdomain
  local-zone: "example.com." transparent
forward-zone:
  name: "example.com."
  forward-addr: 127.0.0.1@{up_port}
"""))
            proc = spawn(["unbound", "-d", "-c", str(ub_port_conf)])
            _wait_ready(port, "h1.example.com", proc)
            servers.append(Server("unbound", port, proc))

        eg = [sys.executable, "-c", "from egressguard.cli.main import main; main()", "dns",
              "serve", "--listen", "127.0.0.1:@PORT", "--upstream", f"127.0.0.1:{up_port}",
              "--policy", str(tmp / "policy.yaml"), "--log-level", "warning"]
        trees = [("", None)] + ([("_before", args.against)] if args.against else [])
        for suffix, src in trees:
            env = dict(os.environ, EGRESSGUARD_STORE=f"sqlite:///{tmp}/store{suffix}.db")
            if src:
                env["PYTHONPATH"] = src
            add(f"egressguard{suffix}", [*eg, "--audit"], env)
            add(f"egressguard_noaudit{suffix}", [*eg, "--no-audit"], env)

        for server in servers:  # warm every path once (caches, imports, JIT-free Python)
            for path in ("allowed", "denied"):
                _dnsperf(server.port, files[path], 1.0)

        for _ in range(args.rounds):
            order = servers[:]
            random.shuffle(order)
            for server in order:
                for path in ("allowed", "denied"):
                    cpu0, own0 = _tree_cpu(server.proc.pid), _cpu_seconds(server.proc.pid)
                    done, lost, qps = _dnsperf(server.port, files[path], args.seconds)
                    server.cpu[path] += _tree_cpu(server.proc.pid) - cpu0
                    server.own[path] += _cpu_seconds(server.proc.pid) - own0
                    server.done[path] += done
                    server.lost[path] += lost
                    server.qps[path].append(qps)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"Python {sys.version.split()[0]}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {args.rounds} interleaved rounds of {args.seconds:g} s per server "
          f"and path; dnsperf -q 100 -c 4, UDP, loopback, {NAMES} names per path")
    print(f"{'server':<28}{'path':<9}{'q/s (median)':>14}{'lost':>7}{'CPU us/q':>10}"
          f"{'self':>7}")
    figures: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds,
                               "load1": round(load[0], 2)}
    for server in servers:
        for path in ("allowed", "denied"):
            qps = statistics.median(server.qps[path])
            cpu_us = server.cpu[path] * 1e6 / max(1, server.done[path])
            own_us = server.own[path] * 1e6 / max(1, server.done[path])
            print(f"{server.name:<28}{path:<9}{qps:>14.0f}{server.lost[path]:>7}"
                  f"{cpu_us:>10.1f}{own_us:>7.1f}")
            figures[f"{server.name}_{path}_qps"] = round(qps)
            figures[f"{server.name}_{path}_cpu_us"] = round(cpu_us, 1)
            figures[f"{server.name}_{path}_self_cpu_us"] = round(own_us, 1)
    by = {s.name: s for s in servers}
    for ours, prefix in (("egressguard", ""), ("egressguard_noaudit", "noaudit_"),
                         ("egressguard_before", "before_"),
                         ("egressguard_noaudit_before", "before_noaudit_")):
        if ours not in by:
            continue
        for peer in ("dnsmasq", "unbound"):
            if peer not in by:
                continue
            for path in ("allowed", "denied"):
                q = statistics.median(by[ours].qps[path]) / statistics.median(by[peer].qps[path])
                figures[f"{prefix}{path}_qps_vs_{peer}"] = round(q, 3)
                c = figures[f"{ours}_{path}_cpu_us"] / max(0.1, figures[f"{peer}_{path}_cpu_us"])
                figures[f"{prefix}{path}_cpu_vs_{peer}"] = round(c, 3)
        before = by.get(f"{ours}_before")
        for path in ("allowed", "denied") if before else ():
            q = statistics.median(by[ours].qps[path]) / statistics.median(before.qps[path])
            figures[f"{prefix}{path}_qps_vs_before"] = round(q, 3)
            c = figures[f"{ours}_{path}_cpu_us"] / max(0.1, figures[f"{before.name}_{path}_cpu_us"])
            figures[f"{prefix}{path}_cpu_vs_before"] = round(c, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
