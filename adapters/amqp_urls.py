"""SAGA_AMQP_URL: one RabbitMQ node's URL, or the URLs of the nodes of one cluster,
comma-separated (`amqp://saga:pw@rabbit-0:5672/,amqp://saga:pw@rabbit-1:5672/,...`).

With several, a connection opens to one of them (the first to answer, starting at a random
one, so that processes spread over the nodes) and, when that node goes away, reconnects to
the next that answers (adapters/rabbitmq/nodes.py): what a load balancer in front of the
cluster would do, for installations without one. The URLs name the nodes of one cluster, so
they must agree on everything but the host and the port: one user, one vhost, one TLS setup.

No broker library is imported here: the settings check the list at start-up."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from adapters.redaction import redact_text

SCHEMES = ("amqp", "amqps")


def node_urls(value: str) -> list[str]:
    """The URLs in SAGA_AMQP_URL, in their order. Raises ValueError saying what to write."""
    urls = [url.strip() for url in value.split(",")]
    if not any(urls):
        raise ValueError(
            "SAGA_AMQP_URL is empty: give a RabbitMQ URL, amqp://user:password@host:5672/vhost"
        )
    if not all(urls):
        raise ValueError(
            f"SAGA_AMQP_URL {redact_text(value)!r} has an empty entry: separate the nodes' "
            "URLs with single commas"
        )
    first = urlsplit(urls[0])
    for number, url in enumerate(urls, 1):
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"SAGA_AMQP_URL entry {number}, {redact_text(url)!r}, is not an amqp:// or "
                "amqps:// URL (a comma separates nodes: write a comma inside a password as %2C)"
            )
        if _but_the_address(parts) != _but_the_address(first):
            raise ValueError(
                f"SAGA_AMQP_URL entry {number}, {redact_text(url)!r}, differs from the first "
                "in more than its host and port: the URLs name the nodes of one cluster, so "
                "give them the same scheme, user, password, vhost and options"
            )
    return urls


def _but_the_address(parts: SplitResult) -> tuple[str | None, ...]:
    return (parts.scheme, parts.username, parts.password, parts.path or "/", parts.query)
