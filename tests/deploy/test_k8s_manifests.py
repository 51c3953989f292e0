"""deploy/k8s against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict:
unknown fields are errors) and against what the code reads, runs and serves."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m

# The oldest Kubernetes we claim (autoscaling/v2, policy/v1 PDB, batch/v1 TTL) and the newest
# the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version() + ".0"]
CRDS = {"ServiceMonitor": m.SCHEMAS / "servicemonitor.schema.json"}


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        r
        for r in m.k8s_resources()
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def schema_problems(resource: dict[str, Any], version: str) -> list[str]:
    if resource["kind"] in CRDS:
        schema = m.json_file(CRDS[resource["kind"]])
        errors = jsonschema.Draft202012Validator(schema).iter_errors(resource)
        return [f"{e.json_path}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{resource['kind']} {resource['metadata']['name']}: {exc.message}"]
    return []


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((m.K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in m.K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_its_schema(version: str) -> None:
    problems = [p for r in m.k8s_resources() for p in schema_problems(r, version)]
    assert problems == []


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", lambda r: r["spec"].update(replica=2)),  # a typo: unknown field
        ("HorizontalPodAutoscaler", lambda r: r["spec"].update(minReplicas="two")),
        ("ServiceMonitor", lambda r: r["spec"]["endpoints"][0].update(intervall="30s")),
    ],
)
def test_schema_validation_catches_a_broken_manifest(kind: str, break_it: Any) -> None:
    resource = m.clone(by_kind(kind, "saga-orchestrator"))
    break_it(resource)
    assert schema_problems(resource, VERSIONS[-1]) != []


def env_problems(resources: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in resources:
        if r["kind"] in ("ConfigMap", "Secret"):
            names += list(r.get("data", {})) + list(r.get("stringData", {}))
        if r["kind"] in ("Deployment", "Job"):
            names += [e["name"] for c in containers(r) for e in c.get("env", [])]
    return m.unknown_env(names)


def test_every_variable_is_one_the_code_reads() -> None:
    resources = m.k8s_resources()
    assert env_problems(resources) == []
    broken = m.clone(by_kind("ConfigMap"))
    broken["data"]["SAGA_PREFECH"] = "50"
    assert env_problems([broken]) != []


def test_secrets_are_in_the_secret_and_only_there() -> None:
    config = by_kind("ConfigMap")["data"]
    secret = by_kind("Secret")["stringData"]
    secret_fields = {name for name, is_secret in facts.settings_env().items() if is_secret}
    # URLs carry passwords; SecretStr fields are secrets by the code's own declaration.
    must_be_secret = secret_fields | {"SAGA_DATABASE_URL", "SAGA_AMQP_URL"}
    assert must_be_secret <= set(secret)
    assert not must_be_secret & set(config)
    assert set(secret) <= must_be_secret, "non-secret settings belong in the ConfigMap"


def test_every_workload_reads_the_configmap_and_the_secret() -> None:
    for r in m.k8s_resources():
        if r["kind"] not in ("Deployment", "Job"):
            continue
        for c in containers(r):
            refs = {
                next(iter(src)): next(iter(src.values()))["name"] for src in c.get("envFrom", [])
            }
            assert refs == {"configMapRef": "saga-config", "secretRef": "saga-secrets"}, r


def test_commands_are_real_subcommands() -> None:
    seen = {}
    for r in m.k8s_resources():
        if r["kind"] in ("Deployment", "Job"):
            for c in containers(r):
                assert "command" not in c, "the image's entrypoint is `saga`"
                assert m.command_problems(None, c["args"]) == []
                seen[r["metadata"]["name"]] = c["args"][0]
    assert seen == {"saga-migrate": "migrate", "saga-orchestrator": "run", "saga-worker": "worker"}
    assert m.command_problems(None, ["serve"]) != []
    assert m.command_problems(None, ["run", "--replicas", "2"]) != []


def probe_problems(deployment: dict[str, Any], bind: str) -> list[str]:
    problems: list[str] = []
    (container,) = containers(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("http") != m.bind_port(bind):
        problems.append(f"containerPort {ports.get('http')} is not SAGA_HTTP_BIND's {bind}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"no {probe}")
            continue
        problems += m.path_problems(get["path"])
        if get["port"] not in ports and get["port"] not in ports.values():
            problems.append(f"{probe} port {get['port']} is not a container port")
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append("readiness must be /readyz: it checks Postgres and RabbitMQ")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problems.append("liveness must be /healthz: a broker outage must not restart pods")
    return problems


def test_probes_and_port_are_what_saga_run_serves() -> None:
    deployment = by_kind("Deployment", "saga-orchestrator")
    bind = by_kind("ConfigMap")["data"]["SAGA_HTTP_BIND"]
    assert not bind.startswith("127."), "the kubelet probes the pod IP: bind every address"
    assert probe_problems(deployment, bind) == []
    broken = m.clone(deployment)
    containers(broken)[0]["readinessProbe"]["httpGet"]["path"] = "/ready"
    assert probe_problems(broken, bind) != []
    assert probe_problems(deployment, "0.0.0.0:9090") != []


def test_replicas_disruption_budget_and_autoscaler_fit_together() -> None:
    deployment = by_kind("Deployment", "saga-orchestrator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "saga-orchestrator",
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (container,) = containers(deployment)
    assert "cpu" in container["resources"]["requests"], "the autoscaler's CPU target needs it"
    assert "memory" in container["resources"]["limits"]


def test_service_and_servicemonitor_reach_the_metrics_route() -> None:
    deployment = by_kind("Deployment", "saga-orchestrator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container,) = containers(deployment)
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    monitor = by_kind("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == port["name"]
        assert m.path_problems(endpoint["path"]) == []


def test_pods_run_as_the_images_non_root_user() -> None:
    dockerfile = (facts.DEPLOY / "Dockerfile").read_text()
    for r in m.k8s_resources():
        if r["kind"] in ("Deployment", "Job"):
            pod = r["spec"]["template"]["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True
            assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in dockerfile
            for c in containers(r):
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
