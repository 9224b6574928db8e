"""Exfiltration-risk analysis and what-if simulation over policies (after
Azure ML's 'Configure data exfiltration prevention')."""

from egressguard.analysis.analyzer import CHECKS, Report, analyze
from egressguard.analysis.findings import Finding, Severity

__all__ = ["CHECKS", "Finding", "Report", "Severity", "analyze"]
