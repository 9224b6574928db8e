"""Least-privilege recommendations from the audit log (`egressguard recommend`)."""

from egressguard.recommend.build import Observed, Options, Proposal, observe, policy_data, propose
from egressguard.recommend.render import diff, render, requests_of

__all__ = ["Observed", "Options", "Proposal", "diff", "observe", "policy_data", "propose",
           "render", "requests_of"]
