"""Search fields of a definition (`Saga(..., search=...)`): resolved and checked when the
definition is built, in the fingerprint only when used, and their values read by the machine
from the input when a saga starts and from the output when it completes."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel

from orchestrator import machine
from orchestrator.definition import GuardContext, Saga, SearchField
from orchestrator.definition_diff import changes
from orchestrator.errors import DefinitionError
from orchestrator.machine import ReplyReceived
from orchestrator.messages import Reply
from orchestrator.search_fields import Indexed, SearchKind, SearchValue
from orchestrator.testing import SAGA_ID, START


class Tier(enum.StrEnum):
    GOLD = "gold"
    PLAIN = "plain"


class Address(BaseModel):
    country: str
    zip: int | None = None


class Order(BaseModel):
    customer_id: str
    amount: Decimal
    qty: int
    weight: float
    vip: bool
    placed_at: datetime
    note: str | None = None
    tier: Tier = Tier.PLAIN
    channel: Literal["web", "shop"] = "web"
    ref: UUID | None = None
    shipping: Address | None = None
    lines: list[str] = []


def receipt(ctx: GuardContext) -> dict[str, Any]:
    return {"charge_id": ctx.results["charge"]["charge_id"], "paid": True}


def order(*search: str | SearchField, output: Any = receipt, version: int = 1) -> Saga:
    s = Saga("order", version=version, input=Order, output=output, search=search)
    s.remote("charge", command="payments.charge", pivot=True)
    return s


INPUT = {
    "customer_id": "c-17",
    "amount": "1250.50",
    "qty": 3,
    "weight": 0.25,
    "vip": True,
    "placed_at": "2026-12-01T09:00:00",
    "note": None,
    "tier": "gold",
    "channel": "shop",
    "ref": "6f1c3a52-2b0e-4c1e-9a4d-5b8e7f3d2a10",
    "shipping": {"country": "NL", "zip": None},
    "lines": [],
}


def test_input_fields_take_their_kind_from_the_input_model() -> None:
    s = order(
        "customer_id",
        "amount",
        "qty",
        "weight",
        "vip",
        "placed_at",
        "note",
        "tier",
        "channel",
        "ref",
        "shipping.country",
        "input.shipping.zip",
    )
    assert {f.name: f.kind for f in s.search} == {
        "customer_id": SearchKind.TEXT,
        "amount": SearchKind.NUMBER,
        "qty": SearchKind.NUMBER,
        "weight": SearchKind.NUMBER,
        "vip": SearchKind.BOOL,
        "placed_at": SearchKind.TIME,
        "note": SearchKind.TEXT,
        "tier": SearchKind.TEXT,
        "channel": SearchKind.TEXT,
        "ref": SearchKind.TEXT,
        "shipping.country": SearchKind.TEXT,
        "shipping.zip": SearchKind.NUMBER,
    }
    assert s.search[-1] == Indexed("shipping.zip", "input", ("shipping", "zip"), SearchKind.NUMBER)


def test_an_output_field_declares_its_type_and_may_be_renamed() -> None:
    s = order(
        SearchField("output.charge_id", type=int),
        SearchField("output.paid", type=bool, name="charged"),
        SearchField("customer_id", type=str, name="customer"),
    )
    assert s.search == (
        Indexed("charge_id", "output", ("charge_id",), SearchKind.NUMBER),
        Indexed("charged", "output", ("paid",), SearchKind.BOOL),
        Indexed("customer", "input", ("customer_id",), SearchKind.TEXT),
    )


@pytest.mark.parametrize(
    ("search", "output", "message"),
    [
        (
            ("customer",),
            receipt,
            r"saga 'order' v1: search field 'customer' is not a field of the input model "
            r"Order \(fields: amount, channel, .*\); fix the path",
        ),
        (("shipping.city",), receipt, r"'shipping.city' is not a field of the input model Address"),
        (("qty.n",), receipt, r"'qty' is not a model with fields, so it has no field 'n'"),
        (("lines",), receipt, r"its type list\[str\] cannot be indexed; .*SearchField\(path, type"),
        (
            ("output.charge_id",),
            receipt,
            r"reads the saga's output, which has no model .* SearchField\('output.charge_id', "
            r"type=int\)",
        ),
        (
            (SearchField("output.charge_id", type=int),),
            None,
            r"reads the saga's output, but the saga has no output=",
        ),
        (
            (SearchField("amount", type=str),),
            receipt,
            r"the input model says Decimal \(number\), type= says text",
        ),
        ((SearchField("qty", type=list),), receipt, r"type=<class 'list'> is not one of str, int"),
        (("customer_id", "customer_id"), receipt, r"search names 'customer_id' twice"),
        (
            ("customer_id", SearchField("amount", name="customer_id")),
            receipt,
            r"search names 'customer_id' twice; remove one, or give one another name",
        ),
        (("customer id",), receipt, r"search field 'customer id' is not a path"),
        ((SearchField("qty", name="a-b"),), receipt, r"name 'a-b' must be letters, digits"),
        ((42,), receipt, r"search field 42 must be a path such as 'customer_id'"),
    ],
)
def test_a_field_that_cannot_be_indexed_fails_at_definition_time(
    search: tuple[Any, ...], output: Any, message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        order(*search, output=output)


def test_search_must_be_a_tuple() -> None:
    with pytest.raises(DefinitionError, match=r"search must be a tuple of fields, e\.g\. search="):
        Saga("order", input=Order, search="customer_id")


def test_search_is_in_the_fingerprint_only_when_used() -> None:
    plain = order()
    assert "search" not in plain.document()
    indexed = order("customer_id")
    assert indexed.document()["search"] == [
        {"name": "customer_id", "source": "input", "path": "customer_id", "kind": "text"}
    ]
    assert len({plain.fingerprint, indexed.fingerprint, order("amount").fingerprint}) == 3
    assert changes(plain.document(), indexed.document()) == ["search: none -> customer_id (text)"]
    more = order("customer_id", SearchField("output.charge_id", type=int, name="charge"))
    assert changes(indexed.document(), more.document()) == [
        "search: customer_id (text) -> customer_id (text), charge (output.charge_id, number)"
    ]


def test_a_start_stores_the_inputs_values_typed() -> None:
    s = order(
        "customer_id",
        "amount",
        "qty",
        "weight",
        "vip",
        "placed_at",
        "note",
        "tier",
        "shipping.country",
        "shipping.zip",
        SearchField("output.charge_id", type=int),
    )
    decision = machine.start(s, saga_id=SAGA_ID, key="k", input=INPUT, now=START)
    # Null values (note, shipping.zip) have none; the output's come at completion.
    assert decision.search == (
        SearchValue("customer_id", SearchKind.TEXT, "c-17"),
        SearchValue("amount", SearchKind.NUMBER, Decimal("1250.50")),
        SearchValue("qty", SearchKind.NUMBER, Decimal(3)),
        SearchValue("weight", SearchKind.NUMBER, Decimal("0.25")),
        SearchValue("vip", SearchKind.BOOL, True),
        SearchValue("placed_at", SearchKind.TIME, datetime(2026, 12, 1, 9, tzinfo=UTC)),
        SearchValue("tier", SearchKind.TEXT, "gold"),
        SearchValue("shipping.country", SearchKind.TEXT, "NL"),
    )


def test_completion_stores_the_outputs_values() -> None:
    s = order(
        "customer_id",
        SearchField("output.charge_id", type=int),
        SearchField("output.paid", type=str),  # a bool there: not a text value, not indexed
    )
    started = machine.start(s, saga_id=SAGA_ID, key="k", input=INPUT, now=START)
    command = started.commands[0]
    reply = Reply(
        command_id=command.command_id,
        saga_id=SAGA_ID,
        step="charge",
        outcome="success",
        result={"charge_id": 991},
    )
    done = machine.decide(s, started.state, ReplyReceived(reply), START)
    assert done.state.output == {"charge_id": 991, "paid": True}
    assert done.search == (SearchValue("charge_id", SearchKind.NUMBER, Decimal(991)),)


def test_a_saga_without_search_fields_stores_none() -> None:
    decision = machine.start(order(), saga_id=SAGA_ID, key="k", input=INPUT, now=START)
    assert decision.search == ()


def test_text_too_long_to_index_and_values_of_another_type_are_left_out() -> None:
    s = order("customer_id", "placed_at")
    long = {**INPUT, "customer_id": "c" * 201, "placed_at": "not a moment"}
    assert machine.start(s, saga_id=SAGA_ID, key="k", input=long, now=START).search == ()
    fits = {**INPUT, "customer_id": "c" * 200}
    assert machine.start(s, saga_id=SAGA_ID, key="k", input=fits, now=START).search[0] == (
        SearchValue("customer_id", SearchKind.TEXT, "c" * 200)
    )
