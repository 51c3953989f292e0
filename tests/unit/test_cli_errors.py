"""What `saga` prints when it cannot reach or keep its services: one line, exit 2."""

from __future__ import annotations

import pytest
import typer
from aiormq.exceptions import AMQPConnectionError

from adapters.cli import support as cli_support


async def _reset() -> None:
    raise AMQPConnectionError("Server connection reset: ConnectionResetError(104)")


def test_a_broker_connection_lost_while_starting_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as exited:
        cli_support.run(_reset())
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lost the connection to RabbitMQ: Server connection reset")
    assert "Traceback" not in err


async def _bug() -> None:
    raise KeyError("a bug")


def test_anything_else_is_not_hidden() -> None:
    with pytest.raises(KeyError):
        cli_support.run(_bug())


def test_each_bad_setting_is_one_line_naming_its_variable_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGA_PREFETCH", "abc")
    monkeypatch.setenv("SAGA_LOG_FORMAT", "xml")
    with pytest.raises(typer.Exit) as exited:
        cli_support.settings()
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: SAGA_PREFETCH='abc': Input should be a valid integer, unable to parse string "
        "as an integer",
        "error: SAGA_LOG_FORMAT='xml': String should match pattern '^(auto|json|console)$'",
    ]


def test_a_rule_across_settings_is_its_own_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGA_RELAY_AGE", "0.5")
    with pytest.raises(typer.Exit):
        cli_support.settings()
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: SAGA_RELAY_AGE (0.5) must be greater than SAGA_RELAY_INTERVAL")
