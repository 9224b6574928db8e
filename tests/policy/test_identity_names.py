"""Identity names a policy scopes to: a name no workload identity can have is refused at
its line (a budget would otherwise silently count nothing for it); a valid name the
policy does not declare is accepted, since a store identity may hold it, and noted by
the analyser where it is written."""

from __future__ import annotations

import pytest

from egressguard.analysis import analyze
from egressguard.analysis.findings import Severity
from egressguard.engine import References
from egressguard.policy import PolicyError, load_policy_text

BUDGET = """restrict_outbound_network_access: Enabled
budgets:
  - name: paste
    destinations: ["*.paste.example"]
    max_bytes: 10MB
    identities:
      - ci-runner
      - {name}
"""


@pytest.mark.parametrize("name", ["'CI Runner'", "'-nobody'", "'spiffe://prod/ns/x'",
                                  "'" + "a" * 129 + "'"])
def test_a_budget_naming_what_cannot_be_an_identity_is_refused_at_its_line(
        name: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(BUDGET.format(name=name), "p.yaml")
    message = str(caught.value)
    [problem] = message.splitlines()[1:]  # one line: file, line, path and reason
    assert problem.strip().startswith("p.yaml: line 7: budgets[0].identities: ")
    assert "can never be a workload identity's name" in problem


SCOPED = """restrict_outbound_network_access: Enabled
identities:
  web: {spiffe_ids: ["spiffe://prod.example/ns/shop/sa/web"]}
application_rule_collections:
  - name: shop
    priority: 100
    identities: [web, ci-runner]
    rules:
      - {name: pypi, targets: [pypi.org], protocols: ["https:443"], identities: [ci-runner]}
      - {name: shop, targets: [shop.example], protocols: ["https:443"]}
"""


def test_a_rule_naming_an_undeclared_identity_loads_and_is_noted_where_it_is_written(
        ) -> None:
    policy = load_policy_text(SCOPED, "p.yaml")  # ci-runner: a store identity
    budgeted = load_policy_text(BUDGET.format(name="batch.nightly_2"), "p.yaml")
    assert budgeted.budgets[0].identities == ["ci-runner", "batch.nightly_2"]
    notes = [(f.rule, f.target, f.severity) for f in analyze(policy, References()).findings
             if f.check == "unresolved-reference"]
    assert notes == [("application:shop", "ci-runner", Severity.INFO),
                     ("application:shop/pypi", "ci-runner", Severity.INFO)]
