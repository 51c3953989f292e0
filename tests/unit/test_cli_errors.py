"""What `saga` prints when it cannot reach or keep its services: one line, exit 2."""

from __future__ import annotations

import pytest
import typer
from aiormq.exceptions import AMQPConnectionError

from adapters import cli_support


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
