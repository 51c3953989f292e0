"""Secrets never reach the logs (URL passwords, tokens: in fields, messages and tracebacks)
or printed settings; wrong broker credentials, a wrong vhost or a wrong database role stop
a process at once with one clear line, logged, and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO

import pytest
import structlog
from sqlalchemy import make_url

from adapters.logging import configure_logging, redact_secrets
from adapters.rabbitmq.connection import BrokerUnavailable, connect
from adapters.settings import Settings

PASSWORD = "s3cr3t-pw-4f1c"


def test_settings_print_without_passwords() -> None:
    settings = Settings(
        amqp_url=f"amqp://saga:{PASSWORD}@mq.internal:5672/prod",
        database_url=f"postgresql+psycopg://saga:{PASSWORD}@db.internal/saga",
        api_tokens=f"ops:operate:{PASSWORD}",
    )
    for shown in (repr(settings), str(settings)):
        assert PASSWORD not in shown
        assert "amqp://saga:***@mq.internal:5672/prod" in shown
    assert settings.amqp_url.endswith(f"{PASSWORD}@mq.internal:5672/prod")  # still usable


def _rendered(fmt: str, log_lines: object) -> str:
    """What configure_logging's pipeline prints for the given calls."""
    out = StringIO()
    configure_logging(fmt, "debug")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
    try:
        assert callable(log_lines)
        log_lines(structlog.get_logger("test"))
    finally:
        structlog.reset_defaults()
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_secret_reaches_the_log_output(fmt: str) -> None:
    url = f"amqp://saga:{PASSWORD}@mq.internal/"

    def lines(log: structlog.typing.FilteringBoundLogger) -> None:
        log.info("settings_loaded", amqp_url=url, nested={"db": {"password": PASSWORD}})
        log.info("calling", headers={"Authorization": f"Bearer {PASSWORD}"}, token=PASSWORD)
        log.info(f"connecting to {url}")
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            log.exception("connect_failed")

    output = _rendered(fmt, lines)
    assert PASSWORD not in output
    assert output.count("saga:***@mq.internal") >= 3
    assert "connect_failed" in output and "ConnectionError" in output  # the traceback is kept
    if fmt == "json":
        assert all(json.loads(line) for line in output.splitlines())


def test_the_processor_masks_at_any_depth() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "api_tokens": "ops:operate:abc",
            "list": [{"secret": 1}, f"postgresql://u:{PASSWORD}@h/db"],
            "error": ValueError(f"password={PASSWORD}"),
            "harmless": "http://example.com/a@b",
        },
    )
    assert event == {
        "event": "x",
        "api_tokens": "***",
        "list": [{"secret": "***"}, "postgresql://u:***@h/db"],
        "error": "ValueError: password=***",
        "harmless": "http://example.com/a@b",
    }


# -- access ----------------------------------------------------------------------------------


def _broker(amqp_url: str, user: str, password: str, vhost: str = "") -> str:
    url = make_url(amqp_url.replace("amqp://", "postgresql://", 1))  # any URL parser will do
    host = f"{url.host}:{url.port or 5672}"
    return f"amqp://{user}:{password}@{host}/{vhost}"


async def test_wrong_broker_credentials_fail_at_once_and_say_so(amqp_url: str) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(BrokerUnavailable) as failed:
        await connect(_broker(amqp_url, "guest", PASSWORD))
    assert "access refused for user 'guest': wrong user name or password" in str(failed.value)
    assert PASSWORD not in str(failed.value)
    [logged] = [e for e in logs if e["event"] == "amqp_connect_failed"]
    assert logged["log_level"] == "error" and PASSWORD not in str(logged)


async def test_a_wrong_vhost_fails_at_once_and_says_so(amqp_url: str) -> None:
    user = make_url(amqp_url.replace("amqp://", "postgresql://", 1))
    with pytest.raises(BrokerUnavailable) as failed:
        await connect(
            _broker(amqp_url, user.username or "guest", user.password or "guest", "no-such-vhost")
        )
    assert "access refused to vhost 'no-such-vhost'" in str(failed.value)


def _saga_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`saga run` as a real process, with these settings on top of the environment."""
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", "run"],
        check=False,
        env={**os.environ, "SAGA_HTTP_BIND": "", "SAGA_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_saga_run_with_a_wrong_broker_password_exits_with_one_clear_line(
    amqp_url: str, database_url: str
) -> None:
    done = _saga_run(
        {"SAGA_DATABASE_URL": database_url, "SAGA_AMQP_URL": _broker(amqp_url, "guest", PASSWORD)}
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert "error: cannot connect to RabbitMQ at amqp://guest:***@" in done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "amqp_connect_failed" for e in logged)


def test_saga_run_with_a_wrong_database_role_exits_with_one_clear_line(
    database_url: str,
) -> None:
    url = make_url(database_url).set(username="no_such_role", password=PASSWORD)
    done = _saga_run({"SAGA_DATABASE_URL": url.render_as_string(hide_password=False)})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert "error: cannot use the database:" in done.stderr
    assert 'role "no_such_role" does not exist' in done.stderr or "authentication" in done.stderr
