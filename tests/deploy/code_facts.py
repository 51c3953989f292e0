"""What the code really reads, runs and serves, introspected: the deploy files are checked
against these, never against a list written by hand."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

import typer.main
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr

from adapters import metrics
from adapters.cli.app import app as cli_app
from adapters.postgres.gauges import LIVE_STATUSES
from adapters.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Labels Prometheus (or the operator's ServiceMonitor) adds to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Series Prometheus itself makes.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": set()}


@functools.cache
def settings_env() -> dict[str, bool]:
    """SAGA_* variable -> whether its field holds a secret (SecretStr)."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {
        f"{prefix}{name}".upper(): field.annotation is SecretStr
        for name, field in Settings.model_fields.items()
    }


def default_http_bind() -> str:
    return str(Settings.model_fields["http_bind"].default)


@functools.cache
def cli_commands() -> dict[str, set[str]]:
    """`saga` subcommand -> its option names (e.g. "--json")."""
    group = typer.main.get_command(cli_app)
    commands: dict[str, Any] = getattr(group, "commands", {})
    return {
        name: {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
        for name, cmd in commands.items()
    }


@functools.cache
def cli_env() -> set[str]:
    """Variables the CLI's options fall back to (SAGA_API_URL, SAGA_API_TOKEN)."""
    group = typer.main.get_command(cli_app)
    found: set[str] = set()
    for cmd in getattr(group, "commands", {}).values():
        for param in cmd.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
    return found


def _shop_main() -> ast.Module:
    return ast.parse((ROOT / "examples" / "shop" / "__main__.py").read_text())


@functools.cache
def shop_env() -> set[str]:
    """Variables examples/shop/__main__.py reads itself (os.environ.get / os.environ[...])."""
    found: set[str] = set()
    for node in ast.walk(_shop_main()):
        key = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and ast.unparse(node.func.value) == "os.environ"
            and node.args
        ):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.add(key.value)
    return found


@functools.cache
def shop_options() -> set[str]:
    """The options `python -m examples.shop` accepts (its argparse add_argument calls)."""
    found = {"-h", "--help"}
    for node in ast.walk(_shop_main()):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".add_argument"):
            found.update(
                str(a.value)
                for a in node.args
                if isinstance(a, ast.Constant) and str(a.value)[:1] == "-"
            )
    return found


@functools.cache
def shop_services() -> set[str]:
    """The example shop's participant services (examples/shop/services.py)."""
    from adapters.postgres.database import make_engine
    from examples.shop.services import build

    # Never connected: building the participants only wires handlers.
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/unused", pool_size=1)
    return {p.service for p in build(engine)}


def known_env() -> set[str]:
    return set(settings_env()) | cli_env() | shop_env()


@functools.cache
def served_paths() -> dict[str, set[str]]:
    """Path -> HTTP methods, from the app's own OpenAPI document (every route `saga run`
    serves besides the dashboard and the docs pages)."""
    from adapters.http.app import openapi_document

    return {path: {m.upper() for m in ops} for path, ops in openapi_document()["paths"].items()}


@functools.cache
def metric_labels() -> dict[str, set[str]]:
    """Every series name adapters/metrics.py exposes -> its label names."""
    found: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name, labels, kind = obj._name, set(obj._labelnames), obj._type
        if kind == "counter":
            found[f"{name}_total"] = labels
        elif kind == "histogram":
            found[f"{name}_bucket"] = labels | {"le"}
            found[f"{name}_sum"] = labels
            found[f"{name}_count"] = labels
        else:
            found[name] = labels
    for collector in (metrics.DATABASE, metrics.AMQP_BLOCKED):
        for family in collector.describe():
            suffix = "_total" if family.type == "counter" else ""
            found[family.name + suffix] = set(getattr(family, "_labelnames", ()))
    return found


def label_values() -> dict[tuple[str, str], set[str]]:
    """(series, label) -> the values the code can give it, where they form a closed set."""
    finished = {"completed", "compensated", "cancelled", "failed"}
    kinds = {"action", "compensation"}
    return {
        ("saga_instances", "status"): {s.value for s in LIVE_STATUSES},
        ("saga_instances_finished_total", "status"): finished,
        ("saga_step_seconds_bucket", "kind"): kinds,
        ("saga_step_seconds_sum", "kind"): kinds,
        ("saga_step_seconds_count", "kind"): kinds,
        ("saga_retries_scheduled_total", "kind"): kinds,
    }
