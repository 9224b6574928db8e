"""Compile one egressguard policy to the enforcers people already run.

One module per target, each pure (policy and references in, `Export` out): `squid`,
`cilium`, `kubernetes`, `azure` (Azure Firewall), `nftables` (the kernel renderer) and
`policyfile` (the lossless YAML form). Every export lists what its target cannot express
(`Export.warnings`, also in the output's comment header or metadata) and narrows instead
of widening: whatever the exported configuration allows, egressguard allows.
"""

from egressguard.export.base import Export, ExportError

FORMATS = ("yaml", "squid", "cilium", "kubernetes", "azure-firewall", "nftables")

__all__ = ["FORMATS", "Export", "ExportError"]
