"""The three-node RabbitMQ cluster of deploy/compose.cluster.yaml and deploy/k8s/rabbitmq:
valid files, nodes that name each other as their peer discovery expects, and the engine's
SAGA_AMQP_URL listing exactly those nodes, in the form the code accepts."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from adapters.amqp_urls import node_urls
from tests.deploy import code_facts as facts
from tests.deploy import manifests as m
from tests.deploy.test_compose import OURS, ours
from tests.deploy.test_compose import schema_problems as compose_schema_problems
from tests.deploy.test_k8s_manifests import VERSIONS, containers
from tests.deploy.test_k8s_manifests import schema_problems as k8s_schema_problems

CLUSTER_CONF = facts.DEPLOY / "rabbitmq" / "cluster.conf"
CLASSIC_NODE = re.compile(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", re.M)


def conf_nodes(text: str) -> list[str]:
    assert "cluster_formation.peer_discovery_backend = classic_config" in text
    return CLASSIC_NODE.findall(text)


# -- compose ---------------------------------------------------------------------------------


def merged() -> dict[str, Any]:
    return m.compose_over(m.compose(), m.compose(m.COMPOSE_CLUSTER))


def rabbit_nodes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in doc["services"].items()
        if str(svc.get("image", "")).startswith("rabbitmq:")
    }


def test_the_cluster_override_matches_the_compose_spec() -> None:
    assert compose_schema_problems(m.compose(m.COMPOSE_CLUSTER)) == []
    assert compose_schema_problems(merged()) == []


def cluster_problems(doc: dict[str, Any]) -> list[str]:
    """Three nodes that cluster.conf lists by their host names, each reading cluster.conf,
    on one Erlang cookie, with a health check and a volume of their own."""
    nodes = rabbit_nodes(doc)
    problems = [] if len(nodes) == 3 else [f"{len(nodes)} RabbitMQ nodes, not 3"]
    names = {f"rabbit@{svc.get('hostname')}" for svc in nodes.values()}
    if set(conf_nodes(CLUSTER_CONF.read_text())) != names:
        problems.append(f"cluster.conf does not list the nodes {sorted(names)}")
    cookies = {
        str(svc.get("environment", {}).get("RABBITMQ_ERLANG_COOKIE")) for svc in nodes.values()
    }
    if len(cookies) != 1 or cookies == {"None"}:
        problems.append(f"the nodes do not share one Erlang cookie: {cookies}")
    data = set()
    for name, svc in nodes.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        conf = [t for t, s in mounts.items() if PurePosixPath(s).name == "cluster.conf"]
        if not conf or not conf[0].startswith("/etc/rabbitmq/conf.d/"):
            problems.append(f"{name} does not read cluster.conf from /etc/rabbitmq/conf.d/")
        data.add(mounts.get("/var/lib/rabbitmq"))
        if "test" not in svc.get("healthcheck", {}):
            problems.append(f"{name} has no health check")
    if len(data - {None}) != 3 or not data <= set(doc["volumes"]):
        problems.append(f"the nodes need a declared data volume each: {data}")
    return problems


def test_three_nodes_that_find_each_other() -> None:
    doc = merged()
    assert cluster_problems(doc) == []
    broken = m.clone(doc)
    broken["services"]["rabbitmq-3"]["hostname"] = "rabbit3"
    broken["services"]["rabbitmq-2"]["environment"]["RABBITMQ_ERLANG_COOKIE"] = "other"
    assert len(cluster_problems(broken)) == 2
    assert cluster_problems(m.compose()) != [], "compose.yaml alone is one node"


def url_problems(doc: dict[str, Any]) -> list[str]:
    """Every process of ours lists exactly the nodes, on their AMQP port, and waits for
    every node to be healthy (but the migration, which needs no broker)."""
    hosts = {svc.get("hostname") for svc in rabbit_nodes(doc).values()}
    problems = []
    for name, svc in ours(doc).items():
        urls = node_urls(m.with_defaults(svc["environment"]["SAGA_AMQP_URL"]))
        listed = {urlsplit(u).hostname for u in urls}
        if listed != hosts or {urlsplit(u).port for u in urls} != {5672}:
            problems.append(f"{name}: SAGA_AMQP_URL lists {sorted(map(str, listed))}")
        if name != "migrate":
            waits = {n for n, c in svc["depends_on"].items() if c["condition"] == "service_healthy"}
            if not set(rabbit_nodes(doc)) <= waits:
                problems.append(f"{name} does not wait for every node")
    return problems


def test_every_process_of_ours_lists_the_nodes() -> None:
    doc = merged()
    assert set(ours(doc)) == set(ours(m.compose())), f"only {OURS} services are overridden"
    assert url_problems(doc) == []
    assert m.unknown_env(n for svc in ours(doc).values() for n in svc["environment"]) == []
    broken = m.clone(doc)
    broken["services"]["shop-payments"]["environment"]["SAGA_AMQP_URL"] = (
        "amqp://saga:saga@rabbitmq:5672/"
    )
    del broken["services"]["orchestrator-2"]["depends_on"]["rabbitmq-3"]
    assert len(url_problems(broken)) == 2


# -- Kubernetes ------------------------------------------------------------------------------


def rabbit_resources() -> list[dict[str, Any]]:
    return m.k8s_resources(m.K8S_RABBITMQ)


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_the_rabbitmq_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((m.K8S_RABBITMQ / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in m.K8S_RABBITMQ.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rabbitmq_manifest_matches_its_schema(version: str) -> None:
    resources = rabbit_resources()
    assert [p for r in resources for p in k8s_schema_problems(r, version)] == []
    broken = m.clone(one(resources, "StatefulSet"))
    broken["spec"]["replica"] = 3
    assert k8s_schema_problems(broken, version) != []


def statefulset_problems(resources: list[dict[str, Any]]) -> list[str]:
    """The nodes' names as the StatefulSet makes them are the ones the configuration lists,
    under a headless Service that publishes them before they are ready."""
    namespace = yaml.safe_load((m.K8S_RABBITMQ / "kustomization.yaml").read_text())["namespace"]
    sts = one(resources, "StatefulSet")
    spec, name = sts["spec"], sts["metadata"]["name"]
    expected = [
        f"rabbit@{name}-{i}.{spec['serviceName']}.{namespace}.svc.cluster.local"
        for i in range(spec["replicas"])
    ]
    (container,) = containers(sts)
    env = {e["name"]: e for e in container["env"]}
    problems = []
    if env["RABBITMQ_NODENAME"]["value"] != (
        f"rabbit@$(MY_POD_NAME).{spec['serviceName']}.$(MY_POD_NAMESPACE).svc.cluster.local"
    ):
        problems.append("RABBITMQ_NODENAME is not the pod's name under the headless Service")
    if env["RABBITMQ_USE_LONGNAME"]["value"] != "true":
        problems.append("the node names are long names")
    (mount,) = [v for v in container["volumeMounts"] if v["name"] == "config"]
    (volume,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "config"]
    config = one(resources, "ConfigMap", volume["configMap"]["name"])
    if conf_nodes(config["data"][mount["subPath"]]) != expected:
        problems.append(f"the configuration does not list {expected}")
    if not mount["mountPath"].startswith("/etc/rabbitmq/conf.d/"):
        problems.append("the configuration is not in /etc/rabbitmq/conf.d/")
    headless = one(resources, "Service", spec["serviceName"])
    if headless["spec"].get("clusterIP") != "None" or not headless["spec"].get(
        "publishNotReadyAddresses"
    ):
        problems.append(f"{spec['serviceName']} must be headless and publish booting pods")
    pod_labels = spec["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container["ports"]}
    for service in (r for r in resources if r["kind"] == "Service"):
        if not service["spec"]["selector"].items() <= pod_labels.items():
            problems.append(f"Service {service['metadata']['name']} selects no node")
        problems += [
            f"Service {service['metadata']['name']} targets no port {p['targetPort']}"
            for p in service["spec"]["ports"]
            if p["targetPort"] not in ports
        ]
    secret = one(resources, "Secret")
    problems += [
        f"{e['name']} reads a key the Secret lacks"
        for e in env.values()
        if "secretKeyRef" in e.get("valueFrom", {})
        and e["valueFrom"]["secretKeyRef"]["key"] not in secret["stringData"]
    ]
    pdb = one(resources, "PodDisruptionBudget")
    if pdb["spec"].get("maxUnavailable") != 1:
        problems.append("a drain must take one node at a time: two of three keep the quorum")
    return problems


def test_the_nodes_are_named_as_the_configuration_lists_them() -> None:
    resources = rabbit_resources()
    assert statefulset_problems(resources) == []
    broken = m.clone(resources)
    one(broken, "StatefulSet")["spec"]["replicas"] = 5
    one(broken, "Service", "rabbitmq-nodes")["spec"].pop("publishNotReadyAddresses")
    assert len(statefulset_problems(broken)) == 2


def test_the_engine_lists_the_nodes_in_its_secret() -> None:
    resources = rabbit_resources()
    sts = one(resources, "StatefulSet")
    namespace = yaml.safe_load((m.K8S_RABBITMQ / "kustomization.yaml").read_text())["namespace"]
    engine = one(m.k8s_resources(), "Secret")["stringData"]["SAGA_AMQP_URL"]
    urls = [urlsplit(u) for u in node_urls(engine)]
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    assert [u.hostname for u in urls] == [
        f"{name}-{i}.{service}.{namespace}.svc.cluster.local" for i in range(3)
    ]
    assert {u.port for u in urls} == {5672}
    assert {u.username for u in urls} == {one(resources, "Secret")["stringData"]["default-user"]}
