"""Shared test configuration. Fixtures for the real services live in tests/fixtures/."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.rabbitmq", "tests.fixtures.polling"]
