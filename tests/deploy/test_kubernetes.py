"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with `kubectl
kustomize`, validates offline against the pinned Kubernetes schema bundled with
`kubernetes-validate` (strict: unknown fields are errors), and carries the settings a
fleet depends on: probes on the health endpoints, non-root, read-only root filesystem,
no capabilities, resources, PDB and HPA, topology spread, the store from a Secret, and
only command-line flags the commands really have."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from egressguard import config
from tests.deploy.conftest import cli_options

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
K8S_VERSION = "1.33.0"  # the pinned schema: the oldest Kubernetes release we support
OVERLAYS = ["dev", "prod"]
COMMANDS = {"gateway": ("serve",), "dns": ("dns", "serve"), "api": ("api",)}

# ServiceMonitor is a CRD (Prometheus Operator): its shape, as far as we use it.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                        "scheme": {"enum": ["http", "https"]}}}}}}},
}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (for `kubectl kustomize`) is not installed")


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(ROOT / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def container_problems(doc: dict[str, Any]) -> list[str]:
    """What a Deployment lacks of the required settings (empty: it has them all)."""
    problems = []
    pod = doc["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True or not pod_sc.get("runAsUser"):
        problems.append("pod not runAsNonRoot with a runAsUser")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("service account token mounted")
    if not pod.get("topologySpreadConstraints"):
        problems.append("no topology spread")
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: root filesystem writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: privilege escalation allowed")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc["capabilities"].get("add"):
            problems.append(f"{c['name']}: capabilities not all dropped")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"{c['name']}: no {probe}")
        resources = c.get("resources", {})
        for part in ("requests", "limits"):
            if set(resources.get(part, {})) != {"cpu", "memory"}:
                problems.append(f"{c['name']}: {part} lack cpu or memory")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        if mounts.get("/var/lib/egressguard") not in empty_dirs:
            problems.append(f"{c['name']}: data home is not an emptyDir")
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("EGRESSGUARD_STORE", {}).get("valueFrom", {}).get("secretKeyRef") is None:
            problems.append(f"{c['name']}: EGRESSGUARD_STORE not from a Secret")
        if "EGRESSGUARD_CONFIG" not in env:
            problems.append(f"{c['name']}: no EGRESSGUARD_CONFIG")
    return problems




def test_every_overlay_validates_against_the_pinned_schema(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ConfigMap", "ServiceAccount", "Namespace"} <= kinds
    for doc in docs:
        validate(doc)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "egressguard"
    assert (name == "prod") == ("ServiceMonitor" in kinds)


def test_the_validation_rejects_broken_manifests(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """The checks can fail: a typo'd field, a wrong type and a missing probe are caught."""
    _, docs = overlay
    gateway = by_kind(docs, "Deployment")["egressguard-gateway"]
    for breakage in ({"replicas": "three"}, {"replica": 3}):
        broken = copy.deepcopy(gateway)
        broken["spec"].update(breakage)
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)
    broken = copy.deepcopy(gateway)
    del broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"] = False
    assert container_problems(broken) == ["gateway: root filesystem writable",
                                          "gateway: no readinessProbe"]
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "m"}, "spec": {"selector": {}, "endpoints": [{}]}}
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_deployments_are_hardened_and_probed(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"egressguard-gateway", "egressguard-dns", "egressguard-api"}
    for doc in deployments.values():
        assert container_problems(doc) == [], doc["metadata"]["name"]
    for name in ("egressguard-gateway", "egressguard-api"):
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
        assert ports["api"] == 8080


def test_commands_use_only_flags_that_exist(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for doc in by_kind(docs, "Deployment").values():
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        path = COMMANDS[component]
        assert tuple(c["args"][:len(path)]) == path
        flags = [a.split("=", 1)[0] for a in c["args"][len(path):]]
        assert flags and all(f.startswith("--") for f in flags)
        assert set(flags) <= cli_options(path), (component, set(flags) - cli_options(path))
        assert "--policy" not in flags  # every component follows the store's cluster
    gateway = by_kind(docs, "Deployment")["egressguard-gateway"]
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--listen=0.0.0.0:3128" in args and "--api-listen=0.0.0.0:8080" in args


def test_gateway_has_a_disruption_budget_and_cpu_autoscaler(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    deployment = by_kind(docs, "Deployment")["egressguard-gateway"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind(docs, "PodDisruptionBudget")["egressguard-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["egressguard-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "egressguard-gateway"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"][
        "maxReplicas"]
    if name == "prod":
        assert deployment["spec"]["replicas"] >= 3 and pdb["spec"]["minAvailable"] >= 2
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
        assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
            "kubernetes.io/hostname", "DoNotSchedule")
        for doc in by_kind(docs, "Deployment").values():
            env = {e["name"]: e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["EGRESSGUARD_AUDIT_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is False


def test_config_map_is_a_valid_config_file_and_policy(
        overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    settings = config.parse_config(cm["data"]["config.yaml"], "config.yaml")
    assert settings == {"home": "/var/lib/egressguard", "cluster": name}
    assert set(cm["data"]) == {"config.yaml"}  # the policy is in the store (apply -f)
    for doc in by_kind(docs, "Deployment").values():
        volumes = doc["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"]
                   for v in volumes)  # the generated (hashed) name: a change rolls pods
    secrets = list(by_kind(docs, "Secret"))
    # dev generates it (hashed name); prod's is created out of band, never kept in Git.
    expected = secrets[0] if name == "dev" else "egressguard"
    assert len(secrets) == (1 if name == "dev" else 0) and expected.startswith("egressguard")
    refs = {e["valueFrom"]["secretKeyRef"]["name"]
            for d in by_kind(docs, "Deployment").values()
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e}
    assert refs == {expected}


def test_workloads_may_reach_only_the_gateway_and_the_dns_filter() -> None:
    docs = render(ROOT / "workloads")
    (policy,) = docs
    validate(policy)
    spec = policy["spec"]
    assert spec["podSelector"] == {} and spec["policyTypes"] == ["Egress"]
    reached = set()
    for rule in spec["egress"]:
        (peer,) = rule["to"]  # no ipBlock, no bare namespace: only the two components
        assert set(peer) == {"namespaceSelector", "podSelector"}
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "egressguard"}
        component = peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        reached |= {(component, p["protocol"], p["port"]) for p in rule["ports"]}
    assert reached == {("gateway", "TCP", 3128), ("dns", "UDP", 5353), ("dns", "TCP", 5353)}
    # The ports are the pods' container ports (policies match after Service translation).
    prod = render(ROOT / "overlays" / "prod")
    ports = {(d["metadata"]["labels"]["app.kubernetes.io/component"], p["protocol"],
              p["containerPort"])
             for d in by_kind(prod, "Deployment").values()
             for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert reached <= ports
