"""The fleet's singleton jobs, built for `Leader` (see `egressguard serve`)."""

from __future__ import annotations

import logging

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
