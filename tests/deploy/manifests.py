"""Loading the deploy files, and the checks they must pass. Each check returns the problems
it found (empty: none), so a test can also show it catches a broken copy."""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import code_facts as facts

K8S = facts.DEPLOY / "k8s"
K8S_RABBITMQ = K8S / "rabbitmq"
COMPOSE = facts.DEPLOY / "compose.yaml"
COMPOSE_CLUSTER = facts.DEPLOY / "compose.cluster.yaml"
SCHEMAS = Path(__file__).parent / "schemas"


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_resources(directory: Path = K8S) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(load_yaml_docs(directory / name))
    return docs


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def compose_over(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`'s services, as compose merges them: a mapping's
    keys (environment, depends_on) one by one, volumes by their target path, anything else
    replaced."""
    merged: dict[str, Any] = clone(base)
    for name, service in override.get("services", {}).items():
        into = merged["services"].setdefault(name, {})
        for key, value in service.items():
            if key in ("environment", "depends_on") and isinstance(into.get(key), dict):
                into[key] = {**into[key], **value}
            elif key == "volumes" and key in into:
                by_target = {v.split(":")[1]: v for v in [*into[key], *value]}
                into[key] = list(by_target.values())
            else:
                into[key] = clone(value)
    merged.setdefault("volumes", {}).update(override.get("volumes") or {})
    return merged


def with_defaults(text: str) -> str:
    """`text` with compose's `${VAR:-default}` replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def clone(value: Any) -> Any:
    return copy.deepcopy(value)


# -- env vars ------------------------------------------------------------------------------


def unknown_env(names: Iterable[str]) -> list[str]:
    """Variables the code does not read: SAGA_* must be a Settings field (or a CLI option's
    fallback), anything else a variable the example shop reads. Other prefixes (POSTGRES_*
    for the postgres image) are not ours to check and are passed in filtered."""
    known = facts.known_env()
    return [f"{n} is read by nothing in the code" for n in names if n not in known]


# -- commands -------------------------------------------------------------------------------


def saga_command_problems(args: list[str]) -> list[str]:
    """`args` as given to the `saga` entrypoint: a real subcommand and real options."""
    if not args:
        return ["no subcommand given to `saga`"]
    sub, *rest = args
    commands = facts.cli_commands()
    if sub not in commands:
        return [f"`saga {sub}` is not a subcommand (there are: {sorted(commands)})"]
    options = commands[sub] | {"--help"}
    return [
        f"`saga {sub}` has no option {a.split('=')[0]}"
        for a in rest
        if a.startswith("-") and a.split("=")[0] not in options
    ]


def shop_command_problems(args: list[str]) -> list[str]:
    """`args` after `python -m examples.shop`: real options, real service names."""
    problems = [
        f"`python -m examples.shop` has no option {a}"
        for a in args
        if a.startswith("-") and a.split("=")[0] not in facts.shop_options()
    ]
    for i, arg in enumerate(args):
        if arg == "--services" and i + 1 < len(args):
            for service in args[i + 1].split(","):
                if service not in facts.shop_services():
                    problems.append(f"the shop has no service {service!r}")
    return problems


def command_problems(entrypoint: list[str] | None, args: list[str]) -> list[str]:
    """A container's command line against what the image's programs accept."""
    if entrypoint in (None, ["saga"]):
        return saga_command_problems(args)
    if entrypoint == ["python", "-m", "examples.shop"]:
        return shop_command_problems(args)
    return [f"unexpected entrypoint {entrypoint}"]


def split_command(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else list(value)


# -- HTTP ------------------------------------------------------------------------------------


def path_problems(path: str, method: str = "GET") -> list[str]:
    served = facts.served_paths()
    if method not in served.get(path, set()):
        return [f"{method} {path} is not served (served: {sorted(served)})"]
    return []


def bind_port(bind: str) -> int:
    return int(bind.rpartition(":")[2])


def iter_dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from iter_dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_dicts(v)


def json_file(path: Path) -> Any:
    return json.loads(path.read_text())
