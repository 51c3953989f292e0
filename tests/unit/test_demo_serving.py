"""`saga demo --serve`'s plan (examples/demo.py): where the dashboard is served and whether it
needs a token, decided before any process starts (the demo itself: tests/e2e/test_demo_serve.py)."""

from __future__ import annotations

import socket

import pytest

from adapters.http.serve import HttpSetupError
from adapters.settings import Settings
from examples.demo import serving_plan


def test_on_loopback_without_tokens_the_dashboard_is_open() -> None:
    plan = serving_plan(Settings(http_bind="127.0.0.1:0"))
    assert (plan.bind.host, plan.read_token, plan.api_tokens) == ("127.0.0.1", None, "")


def test_with_tokens_the_demo_adds_a_read_token_of_its_own() -> None:
    plan = serving_plan(Settings(http_bind="127.0.0.1:0", api_tokens="ops:operate:s3cret"))
    assert plan.read_token is not None and len(plan.read_token) >= 20
    assert plan.api_tokens == f"ops:operate:s3cret,demo-viewer:read:{plan.read_token}"
    exposed = serving_plan(Settings(http_bind="0.0.0.0:0"))
    assert exposed.api_tokens == f"demo-viewer:read:{exposed.read_token}"


def test_a_taken_port_says_what_to_set() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(
            HttpSetupError,
            match=r"cannot serve the dashboard on 127\.0\.0\.1:\d+: .*"
            r"set SAGA_HTTP_BIND to a free host:port",
        ):
            serving_plan(Settings(http_bind=f"127.0.0.1:{port}"))
