"""TLS for RabbitMQ and PostgreSQL, from settings (docs/security.md).

Both travel in the connection URL, so every process and tool that takes the URL (the
orchestrator, workers, the CLI, migrations, health checks) uses them without being told:

- AMQP: `amqps://` with aiormq's query parameters `cafile`, `certfile`, `keyfile` and
  `no_verify_ssl`; `adapters.rabbitmq.connection.connect` builds the SSL context from them
  (`amqp_ssl_context`), so its rules are ours: TLS 1.2 at least, the server's certificate
  and host name verified unless verification is turned off explicitly.
- PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, which psycopg hands to
  libpq as they are.

Options already in a URL are kept; a setting given as well replaces them.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _with_query(url: str, scheme: str | None, options: dict[str, str | None]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update({k: v for k, v in options.items() if v is not None})
    return urlunsplit(parts._replace(scheme=scheme or parts.scheme, query=urlencode(query)))


def amqp_url_with_tls(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify: bool = True,
) -> str:
    """The AMQP URL with TLS on (`amqps`) and these options, if any is given; else as is.
    Without a port in the URL, amqps means 5671."""
    if ca_file is None and cert_file is None and key_file is None and verify:
        return url
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both its cert file and its key file")
    options = {
        "cafile": ca_file,
        "certfile": cert_file,
        "keyfile": key_file,
        "no_verify_ssl": None if verify else "1",
    }
    return _with_query(url, "amqps", options)


def amqp_ssl_context(url: str) -> ssl.SSLContext | None:
    """The SSL context for an `amqps` URL (None for plain `amqp`): the system's CAs, or
    `cafile`'s; the client certificate of `certfile`/`keyfile`; verification of the
    server's certificate and host name unless `no_verify_ssl=1`. A missing or unreadable
    file raises here, at start-up, not at the first reconnect."""
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return None
    query = dict(parse_qsl(parts.query))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=query.get("cafile"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if query.get("certfile"):
        context.load_cert_chain(query["certfile"], query.get("keyfile"))
    if query.get("no_verify_ssl", "0") not in ("0", ""):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def database_url_with_tls(
    url: str,
    *,
    mode: str | None = None,
    root_cert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> str:
    """The database URL with libpq's TLS options, if any is given; else as is."""
    if mode is None and root_cert is None and cert is None and key is None:
        return url
    if mode is not None and mode not in SSL_MODES:
        raise ValueError(f"sslmode {mode!r} is not one of {', '.join(SSL_MODES)}")
    options = {"sslmode": mode, "sslrootcert": root_cert, "sslcert": cert, "sslkey": key}
    return _with_query(url, None, options)
