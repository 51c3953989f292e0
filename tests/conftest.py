"""Shared test configuration. Fixtures for the real services live in tests/fixtures/."""

import os

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.rabbitmq", "tests.fixtures.polling"]

# `saga run` serves HTTP on 127.0.0.1:8080 by default; tests run many orchestrators at once
# (in-process and as subprocesses, which inherit this), so only the tests of the HTTP
# server ask for it, on a port of their own.
os.environ.setdefault("SAGA_HTTP_BIND", "")
