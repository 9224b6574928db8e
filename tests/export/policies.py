"""Random policies covering every construct the exporters translate (for hypothesis)."""

from __future__ import annotations

import random

from egressguard.engine import References
from egressguard.policy import Policy

PATTERNS = ["b.com", ".b.com", "*.b.com", "x.b.com", ".x.b.com", "*.x.b.com", "md-*.e.net",
            "md-*.x.b.com", "e.net", "*.e.net", "*", "other.org", "8.8.8.8",
            "acct.blob.core.windows.net"]
SPECS = ["http:80", "https:443", "http:8080", "http:*", "https:*", "mssql:1433",
         "https:8443"]
DESTS = ["9.9.9.0/24", "8.8.8.8/32", "*.e.net", "b.com", "*", ".x.b.com", "10.0.0.0/8",
         "10.20.0.0/16", "0.0.0.0/0", "169.254.169.254/32", "Storage", "2001:db8::/32",
         "other.org"]
PORTS = [80, 443, "*", "8000-9000", "1433", "0-1023", 53]
SOURCES = ["127.0.0.0/8", "10.1.0.0/16", "::1/128"]
REFS = References(service_tags={"Storage": ["52.239.0.0/17", "2603:1000::/40"]},
                  fqdn_tags={"AzureKubernetesService": ["*.hcp.westeurope.azmk8s.io",
                                                        "mcr.microsoft.com"]},
                  storage_aliases={"/services/Azure/MachineLearning": ["azureml*"]})


def random_policy(rnd: random.Random, wide: bool = True) -> Policy:
    apps = []
    for c in range(rnd.randint(1, 3)):
        rules = []
        for r in range(rnd.randint(1, 4)):
            rule: dict[str, object] = {
                "name": f"r{r}", "targets": rnd.sample(PATTERNS, rnd.randint(1, 3)),
                "protocols": rnd.sample(SPECS, rnd.randint(1, 3))}
            if wide and rnd.random() < 0.15:  # FQDN tags are HTTPS only
                rule["fqdn_tags"] = ["AzureKubernetesService"]
                rule["protocols"] = [p for p in rule["protocols"]  # type: ignore[attr-defined]
                                     if p.startswith("https")] or ["https:443"]
            if rnd.random() < 0.35:
                rule["action"] = rnd.choice(["allow", "deny"])
            if rnd.random() < 0.2:
                rule["sources"] = rnd.sample(SOURCES, rnd.randint(1, 2))
            rules.append(rule)
        apps.append({"name": f"a{c}", "priority": rnd.choice([100, 200, 300]),
                     "action": rnd.choice(["allow", "allow", "deny"]),
                     "report_only": rnd.random() < 0.15, "rules": rules})
    nets = []
    for c in range(rnd.randint(0, 3)):
        rules = []
        for r in range(rnd.randint(1, 3)):
            rule = {"name": f"n{r}", "destinations": rnd.sample(DESTS, rnd.randint(1, 3)),
                    "protocols": rnd.sample(["tcp", "udp", "icmp", "any"], rnd.randint(1, 2)),
                    "ports": rnd.sample(PORTS, rnd.randint(1, 2))}
            if rnd.random() < 0.5:
                rule["action"] = rnd.choice(["allow", "deny"])
            if rnd.random() < 0.2:
                rule["sources"] = rnd.sample(SOURCES, 1)
            rules.append(rule)
        nets.append({"name": f"n{c}", "priority": rnd.choice([100, 200]),
                     "action": rnd.choice(["allow", "deny"]),
                     "report_only": rnd.random() < 0.15, "rules": rules})
    data: dict[str, object] = {
        "restrict_outbound_network_access": rnd.random() < 0.7,
        "report_only": rnd.random() < 0.1,
        "allowed_fqdn_list": rnd.sample(PATTERNS[:-1], rnd.randint(0, 2)),
        "application_rule_collections": apps, "network_rule_collections": nets}
    if wide and rnd.random() < 0.2:
        data["service_endpoint_policies"] = [{
            "name": "sep", "resources": ["acct"],
            "aliases": rnd.sample(["/services/Azure/MachineLearning"], rnd.randint(0, 1))}]
    if wide and rnd.random() < 0.2:
        data["callouts"] = [{"callout_type": "sql", "uri_regex": "db\\.example", "can_call": True}]
    return Policy.model_validate(data)
