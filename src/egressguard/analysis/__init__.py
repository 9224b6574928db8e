"""Exfiltration-risk analysis and what-if simulation over policies (issue 7, seed 004)."""

from egressguard.analysis.analyzer import CHECKS, Report, analyze
from egressguard.analysis.findings import Finding, Severity

__all__ = ["CHECKS", "Finding", "Report", "Severity", "analyze"]
