"""SAGA_AMQP_URL as one node's URL or a cluster's nodes' URLs, comma-separated: what is taken,
and what is refused with what to write instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters.amqp_urls import node_urls
from adapters.settings import Settings

NODES = "amqp://saga:pw@rabbit-0:5672/prod, amqp://saga:pw@rabbit-1:5672/prod,amqp://saga:pw@rabbit-2/prod"


def test_one_url_is_one_node() -> None:
    assert node_urls("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_several_urls_are_the_nodes_in_their_order() -> None:
    assert node_urls(NODES) == [
        "amqp://saga:pw@rabbit-0:5672/prod",
        "amqp://saga:pw@rabbit-1:5672/prod",
        "amqp://saga:pw@rabbit-2/prod",
    ]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "is empty"),
        ("amqp://a/,,amqp://b/", "has an empty entry"),
        ("amqp://a/,", "has an empty entry"),
        # A comma inside a password splits the URL: the error says how to write it.
        ("amqp://saga:s3cr,et@a/", "entry 2, 'et@a/', is not an amqp:// or amqps:// URL"),
        ("amqp://saga:s3cret@a/,http://b/", "write a comma inside a password as %2C"),
        ("amqp://saga:s3cret@a/,amqp://other:s3cret@b/", "entry 2, 'amqp://other:***@b/'"),
        ("amqp://a/prod,amqp://b/test", "same scheme, user, password, vhost and options"),
        ("amqp://a/,amqps://b/", "differs from the first in more than its host and port"),
        ("amqp://a/?heartbeat=5,amqp://b/", "differs from the first"),
    ],
)
def test_a_malformed_list_is_refused_saying_what_to_write(value: str, says: str) -> None:
    with pytest.raises(ValueError, match="SAGA_AMQP_URL") as refused:
        node_urls(value)
    assert says in str(refused.value)
    assert "s3cret" not in str(refused.value), "passwords masked"


def test_settings_refuse_a_malformed_list_at_start_up() -> None:
    with pytest.raises(ValidationError, match="differs from the first"):
        Settings(amqp_url="amqp://saga:pw@a/,amqp://root:pw@b/")
    assert node_urls(Settings(amqp_url=NODES).amqp_url) == node_urls(NODES)


def test_tls_settings_apply_to_every_node() -> None:
    secured = Settings(amqp_url=NODES, amqp_tls_ca_file="/etc/ca.pem")
    urls = node_urls(secured.amqp_url)
    assert [u.split("?")[0] for u in urls] == [
        "amqps://saga:pw@rabbit-0:5672/prod",
        "amqps://saga:pw@rabbit-1:5672/prod",
        "amqps://saga:pw@rabbit-2/prod",
    ]
    assert all(u.endswith("?cafile=%2Fetc%2Fca.pem") for u in urls)
