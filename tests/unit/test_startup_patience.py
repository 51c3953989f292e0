"""Start-up waits for a server that does not answer yet, and only for that: a refusal (wrong
password, TLS) or anything else stops it at once, and so does the end of its patience."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import aiormq
import pytest
from sqlalchemy.exc import OperationalError

from adapters import startup
from adapters.rabbitmq.connection import BrokerUnavailable
from adapters.startup import patiently, unreachable


class PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("pg")
        self.sqlstate = sqlstate


def db_error(sqlstate: str | None) -> OperationalError:
    return OperationalError("SELECT 1", {}, PgError(sqlstate))


@pytest.mark.parametrize(
    ("exc", "waits"),
    [
        (BrokerUnavailable("refused", unreachable=True), True),
        (BrokerUnavailable("wrong password"), False),
        (db_error(None), True),  # the connection itself failed
        (db_error("57P03"), True),  # the database system is starting up
        (db_error("08006"), True),
        (db_error("28P01"), False),  # password authentication failed
        (db_error("3D000"), False),  # no such database
        (ConnectionRefusedError(), True),
        (ssl.SSLCertVerificationError(), False),
        (aiormq.exceptions.ChannelInvalidStateError("closed"), True),
        (aiormq.exceptions.ConnectionClosed(320, "reset"), True),
        (RuntimeError("Connection was not opened"), False),  # unless the connection is down
        (ValueError("bad"), False),
    ],
)
def test_what_start_up_waits_for(exc: BaseException, waits: bool) -> None:
    assert unreachable(exc) is waits


def failing(times: int, exc: BaseException) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "up"

    return call, calls


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "FIRST_DELAY", 0.001)


async def test_a_server_that_comes_up_is_waited_for() -> None:
    call, calls = failing(3, BrokerUnavailable("refused", unreachable=True))
    assert await patiently("RabbitMQ", call, patience=5) == "up"
    assert len(calls) == 4


async def test_a_refusal_stops_start_up_at_once() -> None:
    call, calls = failing(3, db_error("28P01"))
    with pytest.raises(OperationalError):
        await patiently("PostgreSQL", call, patience=5)
    assert len(calls) == 1


async def test_patience_runs_out() -> None:
    call, calls = failing(1000, ConnectionRefusedError())
    with pytest.raises(ConnectionRefusedError):
        await patiently("PostgreSQL", call, patience=0.05)
    assert 1 < len(calls) < 1000


async def test_any_failure_while_the_connection_is_down_is_the_outage() -> None:
    connected = [False, False, True]
    call, calls = failing(2, RuntimeError("Connection was not opened"))
    assert await patiently("RabbitMQ", call, patience=5, down=lambda: not connected.pop(0)) == "up"
    assert len(calls) == 3
    call, calls = failing(2, RuntimeError("PRECONDITION_FAILED"))
    with pytest.raises(RuntimeError):
        await patiently("RabbitMQ", call, patience=5, down=lambda: False)
    assert len(calls) == 1
