"""CPU per keep-alive request with a Basic workload identity vs anonymous, side by side.

    .venv/bin/python bench/identity.py [--rounds 9] [--seconds 4] [--conns 64]

Two `egressguard serve --identities --no-audit --no-api` gateways run at once against one
origin (bench/proxy.py's): "anonymous" enforces an unscoped rule and `wrk` sends no
credential; "basic" enforces the same rule scoped to `identities: [bench]` and `wrk`
sends `Proxy-Authorization: Basic` with a secret from `egressguard identity create` on
every request. Each round runs both `wrk`s at the same time, so load on a shared machine
falls on both alike; the figure is the proxy process's CPU (user + system, /proc) per
request, the median over the rounds. The last line is one JSON object with the medians
and the ratio.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.proxy import Target, _origin_main, _wrk, free_port, wait_port

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--conns", type=int, default=64)
    args = parser.parse_args()
    http_port = free_port()
    origin = multiprocessing.Process(target=_origin_main, args=(http_port, free_port()),
                                     daemon=True)
    origin.start()
    wait_port(http_port)
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
    cpu = {n: statistics.median(m["cpu_us"] for m in f) for n, f in figures.items()}
    rps = {n: statistics.median(m["rps"] for m in f) for n, f in figures.items()}
    load = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    for n in cpu:
        print(f"{n:9} median cpu/req {cpu[n]:6.2f} us   median {rps[n]:9,.0f} req/s")
    print(json.dumps({"cpu_us_anonymous": round(cpu["anonymous"], 2),
                      "cpu_us_basic": round(cpu["basic"], 2),
                      "cpu_ratio": round(cpu["basic"] / cpu["anonymous"], 4),
                      "rps_ratio": round(rps["basic"] / rps["anonymous"], 4),
                      "rounds": args.rounds, "seconds": args.seconds, "conns": args.conns}))


if __name__ == "__main__":
    main()
