"""Big-policy benchmark (issue 14 item 7): `.venv/bin/python bench/bigpolicy.py [--quick]`
(documented in docs/benchmarks.md).

Policies of one-target application rules (`apiN.svcM.exampleK.com`, https:443), each
measured in a fresh child process so that the figures are that process's alone:

* `load`: the store's JSON form of a version parsed, validated and compiled
  (`load_policy_text` + `snapshot_for`, inside `engine.holder.loading`), with the child's
  peak RSS (`VmHWM`) and its RSS after the load (`/proc/self/statm`);
* `in_force` (100k only, or every size with `--follow-all`): a child follows a SQLite
  store cluster with a real `PolicyFeed` (200 ms poll) while its asyncio loop runs a lag
  probe (a 5 ms sleep, its overshoot recorded); the parent commits the big policy through
  `Store.commit` and the child reports the seconds from the commit's return to the swap
  and the largest loop lag from the commit until one second after the swap;
* `in_process` (with `in_force`): the same commit made in the follower's own process (the
  API and the gateway in one `serve`): `Store.commit` in a worker thread, the feed swapping
  on the in-process bus, the lag probe on the loop throughout. Beside the lag, the most
  CPU time the process spent during one probe tick: on a loaded machine a tick also lags
  while the process waits for a core, but CPU spent while the loop cannot run is another
  thread holding the GIL, so this figure is what a long native call costs, whatever the
  load.

`--quick`: 100k rules only. `--yaml`: also the 100k-rule policy loaded from a YAML file
(`load_policy_text` of `dump_policy`'s text). `--against SRC`: the same children also run
on another source tree (e.g. `/work/main/src`, the code before a change), interleaved with
this one's, size by size, each figure keyed `before_...` as well. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (100_000, 1_000_000)
LAG_TICK = 0.005


def document(rules: int) -> dict[str, Any]:
    return {"restrict_outbound_network_access": True,
            "application_rule_collections": [{
                "name": "big", "priority": 200,
                "rules": [{"name": f"r{i}", "protocols": ["https:443"],
                           "targets": [f"api{i}.svc{i % 1000}.example{i % 97}.com"]}
                          for i in range(rules)]}]}


def _rss_now_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """This process's peak RSS (`VmHWM`: `ru_maxrss` would count the parent's RSS at the
    fork too, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_load(path: str) -> None:
    """Load the JSON form at `path` as a feed does; print one JSON line."""
    from egressguard.catalog.compile import snapshot_for
    from egressguard.engine.holder import Active, SnapshotHolder, loading
    from egressguard.policy import load_policy_text

    start_mb = _rss_now_mb()
    text = Path(path).read_text(encoding="utf-8")
    with loading():
        t0 = time.perf_counter()
        policy = load_policy_text(text, path)
        t1 = time.perf_counter()
        snapshot = snapshot_for(policy)
        t2 = time.perf_counter()
    del text
    holder = SnapshotHolder(Active(snapshot, "1", path))  # freezes a big snapshot
    del snapshot  # the holder's (the same one: a feed compiles a version once)
    assert holder.current.restricted
    print(json.dumps({"parse_validate_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
                      "load_s": round(t2 - t0, 3), "peak_mb": round(_peak_mb(), 1),
                      "rss_after_mb": round(_rss_now_mb(), 1),
                      "rss_start_mb": round(start_mb, 1)}), flush=True)


async def _follow(url: str, cluster: str) -> dict[str, Any]:
    from egressguard.source import PolicyFeed

    feed = PolicyFeed(url, cluster)
    holder = feed.start()
    swapped: list[float] = []
    holder.subscribe(lambda _active: swapped.append(time.time()))
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []  # (wall time, lag s)
    print("ready", flush=True)
    committed_line = await loop.run_in_executor(None, sys.stdin.readline)
    committed_at = float(committed_line)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = loop.time()
        await asyncio.sleep(LAG_TICK)
        lags.append((time.time(), loop.time() - before - LAG_TICK))
        if swapped and time.time() > swapped[0] + 1.0:
            break
    feed.stop()
    window = [lag for at, lag in lags if at >= committed_at]
    return {"in_force_after_commit_s": round(swapped[0] - committed_at, 3) if swapped
            else None, "max_loop_lag_ms": round(max(window, default=0) * 1000, 1),
            "lag_samples": len(window), "follower_peak_mb": round(_peak_mb(), 1),
            "follower_rss_mb": round(_rss_now_mb(), 1)}


async def _in_process(url: str, rules: int) -> dict[str, Any]:
    """A commit made in the gateway's own process (`serve` with the API): `Store.commit`
    in a worker thread, an in-process `PolicyFeed` swapping on the store's bus, the lag
    probe on this loop from the commit's start until one second after the swap."""
    from egressguard.policy import Policy
    from egressguard.source import PolicyFeed
    from egressguard.store import Store

    store = Store(url)
    store.create_cluster("big", Policy.model_validate(document(10)), "bench")
    feed = PolicyFeed(store, "big")
    holder = feed.start()
    swapped: list[float] = []
    holder.subscribe(lambda _active: swapped.append(time.time()))
    policy = Policy.model_validate(document(rules))  # an API body, validated before
    loop = asyncio.get_running_loop()
    began = time.time()
    commit = loop.run_in_executor(None, lambda: (store.commit("big", policy, "bench", "x"),
                                                 time.time())[1])
    worst = worst_cpu = 0.0
    while not (commit.done() and swapped and time.time() > swapped[0] + 1.0):
        before, cpu = loop.time(), time.process_time()
        await asyncio.sleep(LAG_TICK)
        worst = max(worst, loop.time() - before - LAG_TICK)
        worst_cpu = max(worst_cpu, time.process_time() - cpu)
        if time.time() > began + 600:
            break
    committed = await commit
    feed.stop()
    store.close()
    return {"in_process_commit_s": round(committed - began, 3),
            "in_process_max_loop_lag_ms": round(worst * 1000, 1),
            "in_process_max_tick_cpu_ms": round(worst_cpu * 1000, 1)}


def child_in_process(url: str, rules: str) -> None:
    print(json.dumps(asyncio.run(_in_process(url, int(rules)))), flush=True)


def child_follow(url: str, cluster: str) -> None:
    print(json.dumps(asyncio.run(_follow(url, cluster))), flush=True)


def _env(src: str | None) -> dict[str, str] | None:
    """The environment of a child running the source tree `src` (None: this one's)."""
    return None if src is None else {**os.environ, "PYTHONPATH": src}


def _run_child(args: list[str], src: str | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], text=True, env=_env(src),
                         capture_output=True, check=True, timeout=1800)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure_load(rules: int, workdir: Path, src: str | None = None,
                 form: str = "json") -> dict[str, Any]:
    """Load the store's JSON form, or (`form="yaml"`) the policy as a YAML file."""
    path = workdir / f"policy-{rules}.{form}"
    if not path.exists():
        if form == "yaml":
            from egressguard.policy import Policy, dump_policy

            text = dump_policy(Policy.model_validate(document(rules)))
        else:
            text = json.dumps(document(rules), separators=(",", ":"))
        path.write_text(text, encoding="utf-8")
    return _run_child(["--child-load", str(path)], src)


def measure_in_force(rules: int, workdir: Path, src: str | None = None) -> dict[str, Any]:
    from egressguard.policy import Policy
    from egressguard.store import Store

    url = f"sqlite:///{workdir}/store-{rules}-{'before' if src else 'after'}.db"
    with Store(url) as store:
        store.create_cluster("big", Policy.model_validate(document(10)), "bench")
        policy = Policy.model_validate(document(rules))
        follower = subprocess.Popen([sys.executable, __file__, "--child-follow", url, "big"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=_env(src))
        assert follower.stdin is not None and follower.stdout is not None
        if follower.stdout.readline().strip() != "ready":
            raise SystemExit("follower did not start")
        t0 = time.perf_counter()
        store.commit("big", policy, "bench", f"{rules} rules")
        commit_s = time.perf_counter() - t0
        follower.stdin.write(f"{time.time()}\n")
        follower.stdin.flush()
        out, _ = follower.communicate(timeout=600)
    result = dict(json.loads(out.strip().splitlines()[-1]))
    result["commit_s"] = round(commit_s, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rules only")
    parser.add_argument("--follow-all", action="store_true",
                        help="measure the commit-to-in-force path for 1M rules too")
    parser.add_argument("--yaml", action="store_true",
                        help="also load the 100k-rule policy as a YAML file")
    parser.add_argument("--against", metavar="SRC",
                        help="also run every child on this source tree, interleaved")
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    parser.add_argument("--child-follow", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-in-process", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        return child_load(args.child_load)
    if args.child_follow:
        return child_follow(*args.child_follow)
    if args.child_in_process:
        return child_in_process(*args.child_in_process)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    figures: dict[str, Any] = {}
    sizes = SIZES[:1] if args.quick else SIZES
    trees: list[tuple[str, str | None]] = [("", None)]
    if args.against:
        trees.insert(0, ("before_", args.against))
    with tempfile.TemporaryDirectory(prefix="bigpolicy-") as tmp:
        for rules in sizes:
            key = f"{rules // 1000}k"
            for label, src in trees:
                load = measure_load(rules, Path(tmp), src)
                print(f"{label}{key} rules load: {load['load_s']:.2f} s (parse+validate "
                      f"{load['parse_validate_s']:.2f}, compile {load['compile_s']:.2f}); "
                      f"peak {load['peak_mb']:.0f} MB, after {load['rss_after_mb']:.0f} MB",
                      flush=True)
                figures.update({f"{label}{key}_{k}": v for k, v in load.items()})
            if rules == SIZES[0] or args.follow_all:
                for label, src in trees:
                    live = measure_in_force(rules, Path(tmp), src)
                    print(f"{label}{key} rules commit {live['commit_s']:.1f} s, in force "
                          f"{live['in_force_after_commit_s']} s after it, max loop lag "
                          f"{live['max_loop_lag_ms']} ms, follower peak "
                          f"{live['follower_peak_mb']:.0f} MB", flush=True)
                    figures.update({f"{label}{key}_{k}": v for k, v in live.items()})
                for label, src in trees:
                    url = f"sqlite:///{tmp}/inproc-{rules}-{label or 'after'}.db"
                    inproc = _run_child(["--child-in-process", url, str(rules)], src)
                    print(f"{label}{key} rules committed in the gateway's process: "
                          f"{inproc['in_process_commit_s']} s to in force, max loop lag "
                          f"{inproc['in_process_max_loop_lag_ms']} ms, most CPU in one "
                          f"tick {inproc['in_process_max_tick_cpu_ms']} ms", flush=True)
                    figures.update({f"{label}{key}_{k}": v for k, v in inproc.items()})
        if args.yaml:
            for label, src in trees:
                load = measure_load(SIZES[0], Path(tmp), src, "yaml")
                print(f"{label}100k rules YAML file load: {load['load_s']:.2f} s (parse+"
                      f"validate {load['parse_validate_s']:.2f}); peak {load['peak_mb']:.0f} "
                      "MB", flush=True)
                figures.update({f"{label}100k_yaml_{k}": v for k, v in load.items()})
    figures["load_average_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
