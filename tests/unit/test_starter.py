"""The starter's checks at the call (no database: each case fails before the connection is
used, which is what "nothing was written" means), its table names, and its documented DDL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest

from adapters import starter
from adapters.starter import InvalidRequest, OutboxTable
from orchestrator.errors import InvalidInput, UnknownSaga
from sagas.order import order_v1, order_v2

ROOT = Path(__file__).resolve().parents[2]
# Never used: every start below is refused before the connection is touched.
NO_CONNECTION = cast(Any, object())
ORDER = {
    "order_id": "42",
    "customer_id": "c-1",
    "amount": "25.00",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


async def test_a_start_beyond_the_wire_limits_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest, match=r"cannot start saga 'order': key: String should"):
        await starter.start(NO_CONNECTION, "order", key="k" * 201, input=ORDER)
    with pytest.raises(InvalidRequest, match=r"saga: String should have at least 1"):
        await starter.start(NO_CONNECTION, "", key="order-42", input=ORDER)
    with pytest.raises(InvalidRequest, match=r"version: Input should be greater"):
        await starter.start(NO_CONNECTION, "order", key="order-42", input=ORDER, version=0)
    with pytest.raises(InvalidRequest, match=r"cannot cancel '': key: String should"):
        await starter.cancel(NO_CONNECTION, key="")


async def test_a_body_the_engine_would_not_read_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"at most 1048576 .*SAGA_MAX_MESSAGE_BYTES"):
        await starter.start(NO_CONNECTION, "order", key="big", input={"blob": "x" * 1_048_576})
    with pytest.raises(InvalidRequest, match="NUL character"):
        await starter.start(NO_CONNECTION, "order", key="nul", input={"note": "a\x00b"})


async def test_with_definitions_an_unknown_saga_or_version_is_refused() -> None:
    definitions = [order_v2, order_v1]
    with pytest.raises(UnknownSaga, match=r"no saga named 'ordr' .*known: order\)"):
        await starter.start(
            NO_CONNECTION, "ordr", key="order-42", input=ORDER, definitions=definitions
        )
    with pytest.raises(UnknownSaga, match=r"no version 3 .*versions: 1, 2\)"):
        await starter.start(
            NO_CONNECTION, "order", key="order-42", input=ORDER, version=3, definitions=definitions
        )


async def test_with_definitions_input_the_model_refuses_is_refused_naming_the_field() -> None:
    wrong = {**ORDER, "amount": "-1"}
    with pytest.raises(InvalidInput, match=r"saga 'order' v2 is invalid: amount: .*greater than 0"):
        await starter.start(
            NO_CONNECTION, "order", key="order-42", input=wrong, definitions=[order_v2, order_v1]
        )
    # A pinned version is checked against its own model.
    with pytest.raises(InvalidInput, match=r"saga 'order' v1 is invalid: items: Field required"):
        await starter.start(
            NO_CONNECTION,
            "order",
            key="order-42",
            input={k: v for k, v in ORDER.items() if k != "items"},
            version=1,
            definitions=[order_v2, order_v1],
        )


async def test_a_valid_start_on_something_that_is_no_connection_is_refused() -> None:
    with pytest.raises(TypeError, match="psycopg"):
        await starter.start(
            NO_CONNECTION, "order", key="order-42", input=ORDER, definitions=[order_v2]
        )


def test_table_names_must_be_plain_identifiers() -> None:
    assert OutboxTable(schema="shop").qualified == "shop.saga_starter_outbox"
    for name in ("Outbox", "out-box", "x; DROP TABLE orders", "", "a" * 49):
        with pytest.raises(ValueError, match="not a plain identifier"):
            OutboxTable(name)
    with pytest.raises(ValueError, match="schema name"):
        OutboxTable(schema="My Schema")


def test_the_documented_ddl_is_the_one_install_runs() -> None:
    page = (ROOT / "docs" / "starter.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", page, flags=re.S)
    documented = next(b for b in blocks if b.startswith("CREATE TABLE"))
    assert documented.strip() == ";\n\n".join(starter.OUTBOX.ddl()) + ";"
