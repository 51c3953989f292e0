"""TLS options for RabbitMQ and PostgreSQL (docs/security.md): settings reach the URLs, the
AMQP connection builds its SSL context from them and really speaks TLS — against a loopback
TLS server of the test's own, never by reconfiguring the shared broker — and libpq gets
sslmode and friends."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from adapters.postgres.database import make_engine
from adapters.rabbitmq.connection import BrokerUnavailable, connect
from adapters.settings import Settings
from adapters.tls import amqp_ssl_context
from tests.fixtures.postgres import SERVER_URL
from tests.security.conftest import Certs

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_settings(port: int, **tls: object) -> Settings:
    return Settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", **tls)  # type: ignore[arg-type]


def test_tls_settings_fold_into_the_urls() -> None:
    plain = Settings(amqp_url="amqp://u:p@h:5672/v", database_url="postgresql://u:p@h/db")
    assert (plain.amqp_url, plain.database_url) == ("amqp://u:p@h:5672/v", "postgresql://u:p@h/db")
    secured = Settings(
        amqp_url="amqp://u:p@h:5671/v?heartbeat=30",
        amqp_tls_ca_file="/etc/ca.pem",
        amqp_tls_cert_file="/etc/me.pem",
        amqp_tls_key_file="/etc/me.key",
        database_url="postgresql://u:p@h/db",
        database_ssl_mode="verify-full",
        database_ssl_root_cert="/etc/pg-ca.pem",
    )
    assert secured.amqp_url == (
        "amqps://u:p@h:5671/v?heartbeat=30&cafile=%2Fetc%2Fca.pem"
        "&certfile=%2Fetc%2Fme.pem&keyfile=%2Fetc%2Fme.key"
    )
    assert secured.database_url == (
        "postgresql://u:p@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fpg-ca.pem"
    )
    assert make_url(secured.database_url).query == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/pg-ca.pem",
    }
    unverified = Settings(amqp_url="amqp://h/", amqp_tls_verify=False)
    assert unverified.amqp_url == "amqps://h/?no_verify_ssl=1"


def test_half_a_client_certificate_or_an_unknown_ssl_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="both its cert file and its key file"):
        Settings(amqp_tls_cert_file="/etc/me.pem")
    with pytest.raises(ValueError, match="database_ssl_mode"):
        Settings(database_ssl_mode="sometimes")


def test_the_ssl_context_verifies_the_server_unless_told_not_to(certs: Certs) -> None:
    assert amqp_ssl_context("amqp://h/") is None
    verified = amqp_ssl_context(amqp_settings(5671, amqp_tls_ca_file=str(certs.ca)).amqp_url)
    assert verified is not None
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    assert verified.minimum_version >= ssl.TLSVersion.TLSv1_2
    # typeshed types each certificate field as the union of every field's type.
    assert [dict(s[0] for s in c["subject"])["commonName"] for c in verified.get_ca_certs()] == [  # type: ignore[misc]
        "ca"
    ]
    unverified = amqp_ssl_context(amqp_settings(5671, amqp_tls_verify=False).amqp_url)
    assert unverified is not None
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname


@dataclass
class TlsServer:
    """Accepts TLS on loopback and records the first bytes each client sends once the
    handshake is done; then hangs up (it is no broker)."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    handshakes_failed: int = 0


@pytest.fixture
async def tls_server(certs: Certs, request: pytest.FixtureRequest) -> AsyncIterator[TlsServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if getattr(request, "param", None) == "client-cert":
        context.load_verify_locations(certs.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    state = TlsServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            state.received.append(await reader.readexactly(len(AMQP_HEADER)))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def attempt(settings: Settings) -> BrokerUnavailable:
    with pytest.raises(BrokerUnavailable) as failed:
        await asyncio.wait_for(connect(settings.amqp_url), timeout=15)
    return failed.value


async def test_amqp_over_tls_verified_against_the_configured_ca(
    tls_server: TlsServer, certs: Certs
) -> None:
    await attempt(amqp_settings(tls_server.port, amqp_tls_ca_file=str(certs.ca)))
    # The handshake succeeded and the AMQP protocol header came through it.
    assert tls_server.received == [AMQP_HEADER]


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_server: TlsServer, certs: Certs
) -> None:
    failed = await attempt(amqp_settings(tls_server.port, amqp_tls_ca_file=str(certs.other_ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed)
    assert tls_server.received == []


async def test_without_verification_any_certificate_is_accepted(
    tls_server: TlsServer, certs: Certs
) -> None:
    await attempt(
        amqp_settings(tls_server.port, amqp_tls_ca_file=str(certs.other_ca), amqp_tls_verify=False)
    )
    assert tls_server.received == [AMQP_HEADER]


@pytest.mark.parametrize("tls_server", ["client-cert"], indirect=True)
async def test_a_client_certificate_is_presented_when_configured(
    tls_server: TlsServer, certs: Certs
) -> None:
    without = amqp_settings(tls_server.port, amqp_tls_ca_file=str(certs.ca))
    await attempt(without)
    assert tls_server.received == []  # the server demanded a certificate and got none
    with_cert = amqp_settings(
        tls_server.port,
        amqp_tls_ca_file=str(certs.ca),
        amqp_tls_cert_file=str(certs.client_cert),
        amqp_tls_key_file=str(certs.client_key),
    )
    await attempt(with_cert)
    assert tls_server.received == [AMQP_HEADER]


async def test_a_missing_ca_file_fails_at_connect_saying_so(tmp_path: Path) -> None:
    failed = await attempt(amqp_settings(5671, amqp_tls_ca_file=str(tmp_path / "nope.pem")))
    assert "No such file" in str(failed)


async def _server_ssl(url: str) -> bool:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return str(await conn.scalar(text("SHOW ssl"))) == "on"
    finally:
        await engine.dispose()


async def test_database_ssl_mode_reaches_libpq() -> None:
    """sslmode=require against the test server: over TLS if the server offers it (then
    pg_stat_ssl says so), else refused — either way libpq was told."""
    server = SERVER_URL.render_as_string(hide_password=False)
    url = Settings(database_url=server, database_ssl_mode="require").database_url
    engine = make_engine(url, pool_size=1)
    try:
        if await _server_ssl(server):
            async with engine.connect() as conn:
                on_tls = await conn.scalar(
                    text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            assert on_tls is True
        else:
            with pytest.raises(OperationalError, match="server does not support SSL"):
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
