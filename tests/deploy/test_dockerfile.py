"""deploy/Dockerfile: multi-stage, non-root, a health check on a route `saga run` serves,
the `saga` entrypoint the package installs; and the health check script itself."""

from __future__ import annotations

import http.server
import importlib.util
import re
import threading
import tomllib
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m

DOCKERFILE = facts.DEPLOY / "Dockerfile"
HEALTHCHECK = facts.DEPLOY / "docker" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (ln.strip() for ln in text.splitlines())
        if line and not line.startswith("#")
    ]


def healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("saga_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_stages_and_a_non_root_runtime() -> None:
    steps = instructions()
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS build") and stages[1].endswith("AS runtime")
    runtime = steps[[op for op, _ in steps].index("FROM", 1) :]
    assert any(op == "COPY" and arg.startswith("--from=build") for op, arg in runtime)
    (user,) = [arg for op, arg in runtime if op == "USER"]
    assert not user.startswith(("0", "root"))


def test_entrypoint_is_the_saga_script_the_package_installs() -> None:
    scripts = tomllib.loads((facts.ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = [arg for op, arg in instructions() if op == "ENTRYPOINT"]
    assert entry == '["saga"]' and "saga" in scripts


def test_healthcheck_asks_a_route_saga_run_serves() -> None:
    (check,) = [arg for op, arg in instructions() if op == "HEALTHCHECK"]
    command = check.split("CMD", 1)[1].strip()
    assert command.startswith('["saga-healthcheck"')
    path = re.findall(r'"(/[^"]*)"', command)[0]
    assert m.path_problems(path) == []
    assert m.path_problems("/health") != []
    module = healthcheck_module()
    assert facts.default_http_bind() == module.DEFAULT_BIND


def test_the_build_copies_only_what_exists_and_dockerignore_lets_in() -> None:
    ignore = (facts.ROOT / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for op, arg in instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for source in sources:
                assert (facts.ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("0.0.0.0:8080", "http://127.0.0.1:8080/healthz"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/healthz"),
        ("[::]:8080", "http://[::1]:8080/healthz"),
        ("[::1]:8081", "http://[::1]:8081/healthz"),
    ],
)
def test_the_script_asks_loopback_on_the_bound_port(bind: str, url: str) -> None:
    assert healthcheck_module().probe_url(bind, "/healthz") == url


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server: 200 on /healthz, 503 elsewhere; records the paths asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], asked
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_script_exits_0_only_on_a_200(
    server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, asked = server
    module = healthcheck_module()
    monkeypatch.setenv("SAGA_HTTP_BIND", f"0.0.0.0:{port}")
    assert module.main(["saga-healthcheck"]) == 0
    assert module.main(["saga-healthcheck", "/readyz"]) == 1
    assert asked == ["/healthz", "/readyz"]
    monkeypatch.setenv("SAGA_HTTP_BIND", "")
    assert module.main(["saga-healthcheck"]) == 1
