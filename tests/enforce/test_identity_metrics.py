"""Decisions are counted by identity with a bounded label: however many identities call,
the metric holds at most MAX_IDENTITY_LABELS names plus `other`."""

from __future__ import annotations

from prometheus_client import REGISTRY

from egressguard import metrics
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.engine import Kind, Request
from egressguard.engine.holder import SnapshotHolder
from egressguard.policyfile import load_active


def test_identity_labels_are_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.yaml"
    path.write_text("restrict_outbound_network_access: true\n")
    cp = Checkpoint(SnapshotHolder(load_active(path)))
    decision, permitted = cp.decide(Request(kind=Kind.CONNECT, host="x.test", port=443))
    for i in range(metrics.MAX_IDENTITY_LABELS * 3):
        cp.note(decision, permitted, "connect", "", f"workload-{i}")
    cp.note(decision, permitted, "connect", "", "")
    labels = {s.labels["identity"] for fam in REGISTRY.collect()
              if fam.name == "egressguard_identity_decisions" for s in fam.samples}
    assert len(labels - {"other"}) <= metrics.MAX_IDENTITY_LABELS
    assert "other" in labels
    other = REGISTRY.get_sample_value("egressguard_identity_decisions_total",
                                      {"identity": "other", "verdict": "deny",
                                       "permitted": "false"})
    assert other is not None and other >= metrics.MAX_IDENTITY_LABELS
