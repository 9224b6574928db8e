"""The fleet's singleton jobs, built for `Leader` (see `egressguard serve`): audit
retention, the periodic key check and scheduled recommendations. Each runs in the
leader only; another gateway takes over when the leader dies (`fleet/leader.py`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from egressguard.audit.log import Retention
from egressguard.fleet.leader import Job

_log = logging.getLogger("egressguard.fleet")


def retention_job(store_url: str, retention: Retention, envelope: object = None) -> Job:
    """Prune the audit log by `retention`, once per fleet (not in every gateway's
    writer: N gateways pruning at once would contend for the same rows). With the
    cluster's `envelope` the prune record is MACed under a data key every gateway of the
    cluster can unwrap (else under the local audit key)."""
    state: dict[str, object] = {}

    def run() -> None:
        from egressguard.audit.crypto import EnvelopeSealer, Sealer, load_or_create_key
        from egressguard.audit.db import make_engine
        from egressguard.audit.query import prune

        if "engine" not in state:
            state["engine"] = make_engine(store_url)
            state["sealer"] = EnvelopeSealer(envelope, legacy=Sealer(load_or_create_key()))
        removed = prune(state["engine"], state["sealer"],  # type: ignore[arg-type]
                        max_age_s=retention.max_age_s, max_rows=retention.max_rows)
        if removed:
            _log.info("audit retention removed %d events", removed)

    return Job("audit retention", retention.every_s, run)


def key_check_job(store_url: str, every_s: float) -> Job:
    """Check every cluster's customer-managed key against its vault, once per fleet: a
    key that is disabled, deleted or no longer granted turns the cluster `Suspended` (a
    warning naming the reason, `egressguard_cluster_key_suspended{cluster}` 1) and back
    (`Running`, 0). What `cluster show` reports on request, watched without a request."""
    state: dict[str, object] = {}
    seen: dict[str, str] = {}

    def run() -> None:
        from egressguard import metrics
        from egressguard.audit.db import make_engine
        from egressguard.keys import clusterkeys
        from egressguard.keys.master import load_master_key

        if "engine" not in state:
            state["engine"] = make_engine(store_url)
            state["master"] = load_master_key()
        keys = clusterkeys.all_keys(state["engine"])  # type: ignore[arg-type]
        for cluster, props in sorted(keys.items()):
            found = clusterkeys.state(props, store_url, state["master"],  # type: ignore[arg-type]
                                      cluster)
            before = seen.get(cluster)
            seen[cluster] = found.state
            metrics.CLUSTER_KEY_SUSPENDED.labels(cluster).set(
                1 if found.state == clusterkeys.SUSPENDED else 0)
            if found.state == clusterkeys.SUSPENDED and before != found.state:
                _log.warning("key check: cluster %s is Suspended: %s", cluster, found.reason)
            elif found.state == clusterkeys.RUNNING and before == clusterkeys.SUSPENDED:
                _log.warning("key check: cluster %s is Running again (key version %s)",
                             cluster, found.key_version)
        for gone in set(seen) - set(keys):   # the key was removed: nothing to check
            del seen[gone]
            metrics.CLUSTER_KEY_SUSPENDED.remove(gone)

    return Job("key check", every_s, run)


def recommendation_job(store_url: str, every_s: float, window_s: float, out: Path,
                       clusters: list[str] | None = None) -> Job:
    """Write the recommender's least-privilege policy for each cluster's traffic of the
    last `window_s` seconds to `out/<cluster>.yaml`, and its difference from the policy
    in force to `out/<cluster>.diff`, once per fleet every `every_s` seconds (each file
    replaced whole, so a reader never sees half of one). `clusters`: all by default."""
    state: dict[str, object] = {}

    def run() -> None:
        import time

        from egressguard.audit.crypto import Sealer, load_or_create_key
        from egressguard.audit.db import make_engine
        from egressguard.audit.query import Filter, scan
        from egressguard.recommend import Options, diff, observe, propose, render
        from egressguard.store import Store

        if "engine" not in state:
            state["engine"] = make_engine(store_url)
            state["sealer"] = Sealer(load_or_create_key())
        with Store(store_url, create_default=False) as store:
            names = clusters or store.clusters()
            current = {name: store.current(name).policy for name in names}
        out.mkdir(parents=True, exist_ok=True)
        options = Options()
        for name in names:
            flt = Filter(since=time.time() - window_s, cluster=name)
            seen = observe(scan(state["engine"], flt, sealer=state["sealer"]),  # type: ignore[arg-type]
                           options)
            proposals = propose(seen, options)
            _replace(out / f"{name}.yaml", render(proposals, seen, name))
            _replace(out / f"{name}.diff", diff(current[name], proposals, seen))
            _log.info("recommendation for cluster %s: %d rules from %d calls (%s)", name,
                      len(proposals), seen.calls, out / f"{name}.yaml")

    return Job("scheduled recommendations", every_s, run)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
