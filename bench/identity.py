"""CPU per keep-alive request with a Basic workload identity vs anonymous, side by side.

    .venv/bin/python bench/identity.py [--rounds 9] [--seconds 4] [--conns 64]
    .venv/bin/python bench/identity.py --mtls [--connections 400]

Two `egressguard serve --identities --no-audit --no-api` gateways run at once against one
origin (bench/proxy.py's): "anonymous" enforces an unscoped rule and `wrk` sends no
credential; "basic" enforces the same rule scoped to `identities: [bench]` and `wrk`
sends `Proxy-Authorization: Basic` with a secret from `egressguard identity create` on
every request. Each round runs both `wrk`s at the same time, so load on a shared machine
falls on both alike; the figure is the proxy process's CPU (user + system, /proc) per
request, the median over the rounds. The last line is one JSON object with the medians
and the ratio.

`--mtls` measures the TLS listener instead: one gateway (`--tls-listen`, a trustme CA,
a client certificate with a SPIFFE URI SAN mapped to the scoped identity), and a client
opening one connection per request (`Connection: close`), first with a full handshake
each time, then resuming the first session (TLS 1.3 tickets). Figures: the proxy's CPU
and the client's wall time per connection, and the keep-alive CPU per request over TLS.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.proxy import Target, _wrk, free_port, medians, start_origin, wait_port

POLICY = """restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: bench
    priority: 100
{scope}    rules:
      - name: origin
        destinations: [127.0.0.1/32]
        protocols: [TCP]
        ports: ['{port}']
"""


def start(tmp: Path, name: str, http_port: int, scoped: bool) -> tuple[Target, str]:
    """A gateway and the credential its requests carry ("" for none)."""
    exe = Path(sys.executable).parent / "egressguard"
    home = tmp / f"home-{name}"
    env = {**os.environ, "EGRESSGUARD_HOME": str(home)}
    credential = ""
    if scoped:
        made = subprocess.run([str(exe), "identity", "create", "bench", "-o", "json"],
                              env=env, check=True, capture_output=True, text=True)
        secret = json.loads(made.stdout)["secret"]
        credential = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
    policy = tmp / f"{name}.yaml"
    policy.write_text(POLICY.format(port=http_port,
                                    scope="    identities: [bench]\n" if scoped else ""))
    port = free_port()
    proc = subprocess.Popen([str(exe), "serve", "--listen", f"127.0.0.1:{port}",
                             "--policy", str(policy), "--log-level", "warning",
                             "--idle-timeout", "600", "--max-connections", "20000",
                             "--no-api", "--no-audit", "--identities"],
                            stdout=subprocess.DEVNULL, env=env)
    wait_port(port, proc, timeout=60)
    return Target(name, port, proc), credential


def mtls(connections: int) -> None:
    """The TLS listener's cost per new connection, full and resumed (see the docstring)."""
    import socket
    import ssl
    import time

    import trustme
    from tests.gateway.test_mtls import client_cert

    from bench.proxy import _cpu_seconds

    origin, http_port = start_origin()
    load_before = os.getloadavg()
    ca = trustme.CA()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="egressguard-mtls-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = ca.issue_cert("proxy.test", "127.0.0.1")
        server.cert_chain_pems[0].write_to_path(str(tmp / "proxy.pem"))
        server.private_key_pem.write_to_path(str(tmp / "proxy.key"))
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        ident = client_cert(ca, tmp, "bench", uri="spiffe://bench.example/bench")
        policy = tmp / "mtls.yaml"
        policy.write_text(POLICY.format(port=http_port, scope="    identities: [bench]\n")
                          + "identities:\n  bench: {spiffe_ids: "
                            "[\"spiffe://bench.example/bench\"]}\n")
        port, tls_port = free_port(), free_port()
        exe = Path(sys.executable).parent / "egressguard"
        proc = subprocess.Popen(
            [str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--policy", str(policy),
             "--log-level", "warning", "--no-api", "--no-audit",
             "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", str(tmp / "proxy.pem"),
             "--tls-key", str(tmp / "proxy.key"), "--client-ca", str(tmp / "ca.pem")],
            stdout=subprocess.DEVNULL, env={**os.environ, "EGRESSGUARD_HOME": str(tmp / "h")})
        wait_port(tls_port, proc, timeout=60)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.load_cert_chain(ident)
        target = f"127.0.0.1:{http_port}"
        request = (f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n"
                   "Connection: close\r\n\r\n").encode()

        reused = {"count": 0}

        def one(session: ssl.SSLSession | None) -> ssl.SSLSession | None:
            with socket.create_connection(("127.0.0.1", tls_port)) as raw, \
                    context.wrap_socket(raw, server_hostname="proxy.test",
                                        session=session) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(data[:200])
                reused["count"] += sock.session_reused
                return sock.session

        try:
            first = one(None)  # warm-up; its session is the one resumed below
            first = one(None)
            for label, session in (("full", None), ("resumed", first)):
                cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
                for _ in range(connections):
                    one(session)
                wall = time.perf_counter() - t0
                cpu = _cpu_seconds(proc.pid) - cpu0
                results[f"{label}_cpu_us_per_connection"] = round(cpu / connections * 1e6, 1)
                results[f"{label}_wall_us_per_connection"] = round(wall / connections * 1e6,
                                                                   1)
                print(f"{label:8} handshake: proxy CPU {cpu / connections * 1e6:8.1f} us, "
                      f"client wall {wall / connections * 1e6:8.1f} us per connection",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    origin.terminate()
    load = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print(json.dumps({**results, "connections": connections,
                      "resumed_sessions": reused["count"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtls", action="store_true",
                        help="measure the TLS listener's handshakes instead")
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--conns", type=int, default=64)
    args = parser.parse_args()
    if args.mtls:
        mtls(args.connections)
        return
    origin, http_port = start_origin()
    load_before = os.getloadavg()
    figures: dict[str, list[dict[str, float]]] = {"anonymous": [], "basic": []}
    with tempfile.TemporaryDirectory(prefix="egressguard-identity-bench-") as tmpdir:
        tmp = Path(tmpdir)
        gateways = [start(tmp, "anonymous", http_port, False),
                    start(tmp, "basic", http_port, True)]
        try:
            for target, credential in gateways:  # warm-up (and the one scrypt check)
                _wrk(target, http_port, tmp, args.conns, 1,
                     headers={"Proxy-Authorization": credential} if credential else None)
            for round_no in range(args.rounds):
                # Both at once: whatever else loads the machine falls on both alike.
                with ThreadPoolExecutor(2) as pool:
                    runs = {target.name: pool.submit(
                        _wrk, target, http_port, tmp, args.conns, args.seconds,
                        headers={"Proxy-Authorization": credential} if credential else None)
                        for target, credential in gateways}
                for name, run in runs.items():
                    m = run.result()
                    figures[name].append(m)
                    print(f"round {round_no} {name:9} cpu/req {m['cpu_us']:6.1f} us "
                          f"{m['rps']:9,.0f} req/s", flush=True)
        finally:
            for target, _ in gateways:
                assert target.proc is not None
                target.proc.terminate()
                target.proc.wait(10)
    origin.terminate()
    cpu, rps = medians(figures, load_before, 9)
    print(json.dumps({"cpu_us_anonymous": round(cpu["anonymous"], 2),
                      "cpu_us_basic": round(cpu["basic"], 2),
                      "cpu_ratio": round(cpu["basic"] / cpu["anonymous"], 4),
                      "rps_ratio": round(rps["basic"] / rps["anonymous"], 4),
                      "rounds": args.rounds, "seconds": args.seconds, "conns": args.conns}))


if __name__ == "__main__":
    main()
