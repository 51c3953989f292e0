"""deploy/compose.yaml against the compose-spec JSON schema (vendored in check-jsonschema)
and against what the code reads, runs and serves."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import pytest

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m

OURS = "saga-orchestrator"  # services built from deploy/Dockerfile


def compose_schema() -> Any:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    ).read_text()
    return json.loads(text)


def schema_problems(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def ours(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in doc["services"].items()
        if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }


def test_compose_file_matches_the_compose_spec() -> None:
    doc = m.compose()
    assert schema_problems(doc) == []
    broken = m.clone(doc)
    broken["services"]["orchestrator-1"]["depends_on"]["migrate"]["condition"] = "finished"
    assert schema_problems(broken) != []


def test_it_runs_what_the_brief_asks_for() -> None:
    doc = m.compose()
    services = doc["services"]
    runs = {name: m.split_command(svc.get("command")) for name, svc in ours(doc).items()}
    assert sum(1 for args in runs.values() if args[:1] == ["run"]) >= 2, "two orchestrators"
    assert [n for n, a in runs.items() if a[:1] == ["migrate"]] == ["migrate"]
    assert [n for n, a in runs.items() if a[:1] == ["worker"]] == ["worker"]
    shop = {
        n
        for n, svc in ours(doc).items()
        if m.split_command(svc.get("entrypoint")) == ["python", "-m", "examples.shop"]
    }
    served = {runs[n][1] for n in shop}
    assert served == facts.shop_services(), "every shop service, once"
    assert {"postgres", "rabbitmq"} <= set(services)


def env_names(doc: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for svc in ours(doc).values():
        env = svc.get("environment", {})
        names += list(env) if isinstance(env, dict) else [e.split("=")[0] for e in env]
    return names


def test_every_variable_is_one_the_code_reads() -> None:
    doc = m.compose()
    assert m.unknown_env(env_names(doc)) == []
    broken = m.clone(doc)
    broken["services"]["migrate"]["environment"] = {"SAGA_DATABSE_URL": "x"}
    assert m.unknown_env(env_names(broken)) != []


def command_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, svc in ours(doc).items():
        entry = svc.get("entrypoint")
        args = m.split_command(svc.get("command"))
        problems += [
            f"{name}: {p}" for p in m.command_problems(m.split_command(entry) or None, args)
        ]
    return problems


def test_commands_are_real_subcommands_and_options() -> None:
    doc = m.compose()
    assert command_problems(doc) == []
    broken = m.clone(doc)
    broken["services"]["shop-payments"]["command"] = ["--services", "billing"]
    broken["services"]["worker"]["command"] = ["workers"]
    assert len(command_problems(broken)) == 2


def test_orchestrators_serve_http_where_the_healthcheck_and_ports_look() -> None:
    doc = m.compose()
    for name, svc in ours(doc).items():
        args = m.split_command(svc.get("command"))
        if args[:1] != ["run"]:
            # No HTTP served: the image's health check (GET /healthz) would always fail.
            assert svc["healthcheck"] == {"disable": True}, name
            continue
        env = svc["environment"]
        bind = env["SAGA_HTTP_BIND"]
        assert not bind.startswith("127."), f"{name}: other containers must reach it"
        assert env.get("SAGA_API_TOKENS"), f"{name}: `saga run` refuses 0.0.0.0 without tokens"
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "saga-healthcheck"]
        assert m.path_problems(test[2]) == []
        for port in svc.get("ports", []):
            assert int(str(port).rsplit(":", 1)[1]) == m.bind_port(bind), name


def test_start_order_waits_for_health_and_the_migration() -> None:
    doc = m.compose()
    for name in ("postgres", "rabbitmq"):
        assert "healthcheck" in doc["services"][name]
    for name, svc in ours(doc).items():
        needs = svc["depends_on"]
        assert needs["postgres"]["condition"] == "service_healthy", name
        if name != "migrate" and not name.startswith("shop-"):
            assert needs["migrate"]["condition"] == "service_completed_successfully", name
            assert needs["rabbitmq"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("name", ["rabbitmq.conf", "definitions.json"])
def test_rabbitmq_gets_its_files_where_the_config_says(name: str) -> None:
    volumes = m.compose()["services"]["rabbitmq"]["volumes"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith("./")}
    source = {PurePosixPath(s).name: (s, target) for target, s in mounts.items()}[name]
    assert (facts.DEPLOY / source[0]).is_file()
    conf = (facts.DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    if name == "definitions.json":
        assert f"load_definitions = {source[1]}" in conf


def test_database_urls_point_at_the_compose_services() -> None:
    env = m.compose()["services"]["migrate"]["environment"]
    assert "@postgres:5432/" in env["SAGA_DATABASE_URL"]
    assert "@rabbitmq:5672/" in env["SAGA_AMQP_URL"]
    assert env["SAGA_DATABASE_URL"].startswith("postgresql+psycopg://"), "the psycopg 3 driver"
