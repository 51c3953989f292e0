"""Shared test configuration. Fixtures for the real services live in tests/fixtures/."""

import os

import structlog

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.polling",
    "tests.fixtures.alone",
]

# `saga run` serves HTTP on 127.0.0.1:8080 by default; tests run many orchestrators at once
# (in-process and as subprocesses, which inherit this), so only the tests of the HTTP
# server ask for it, on a port of their own.
os.environ.setdefault("SAGA_HTTP_BIND", "")

# Log lines of the tests' own process (in-process orchestrators, the chaos harness's relay)
# print tracebacks as plain text: structlog's default renders them with rich, whose syntax
# highlighting costs milliseconds each, and a chaos run's relay fails hundreds of messages on
# purpose (it starved the harness's event loop past its test's timeout).
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)
