"""Search filters (`customer_id=c-17`, `amount>1000`): parsed against the fields the loaded
definitions declare, typed by the field's kind, refused with a message saying what to write;
and what a condition matches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.definition import Saga, SearchField
from orchestrator.registry import Registry
from orchestrator.search_fields import SearchKind, SearchValue
from orchestrator.search_filters import InvalidFilter, SearchCondition


class Order(BaseModel):
    customer_id: str
    amount: Decimal
    vip: bool = False
    placed_at: datetime | None = None


class Invoice(BaseModel):
    customer_id: str
    amount: str  # text here: a number in the order saga


def receipt(ctx: Any) -> dict[str, Any]:
    return {"charge_id": 1}


C = SearchCondition
TEXT, NUMBER, BOOL, TIME = SearchKind.TEXT, SearchKind.NUMBER, SearchKind.BOOL, SearchKind.TIME


def registry() -> Registry:
    order = Saga(
        "order",
        version=2,
        input=Order,
        output=receipt,
        search=(
            "customer_id",
            "amount",
            "vip",
            "placed_at",
            SearchField("output.charge_id", type=int),
        ),
    )
    order.remote("charge", command="payments.charge", pivot=True)
    old = Saga("order", version=1, input=Order)  # no search fields
    old.remote("charge", command="payments.charge", pivot=True)
    invoice = Saga("invoice", input=Invoice, search=("customer_id", "amount"))
    invoice.remote("send", command="mail.send", compensation=None)
    return Registry([order, old, invoice])


def test_the_registry_lists_declared_fields_by_kind_and_definition() -> None:
    fields = registry().search_fields()
    assert fields["customer_id"] == {TEXT: ["invoice v1", "order v2"]}
    assert fields["amount"] == {TEXT: ["invoice v1"], NUMBER: ["order v2"]}
    assert set(fields) == {"customer_id", "amount", "vip", "placed_at", "charge_id"}
    assert set(registry().search_fields("invoice")) == {"customer_id", "amount"}


@pytest.mark.parametrize(
    ("text", "saga", "expected"),
    [
        ("customer_id=c-17", None, C("customer_id", "=", TEXT, "c-17")),
        (" customer_id = c 17 ", None, C("customer_id", "=", TEXT, "c 17")),
        ("customer_id=a=b", None, C("customer_id", "=", TEXT, "a=b")),
        ("customer_id>=c-1", None, C("customer_id", ">=", TEXT, "c-1")),
        ("amount>1000", "order", C("amount", ">", NUMBER, Decimal(1000))),
        ("amount<=12.50", "order", C("amount", "<=", NUMBER, Decimal("12.5"))),
        ("amount!=-3", "order", C("amount", "!=", NUMBER, Decimal(-3))),
        ("amount<x", "invoice", C("amount", "<", TEXT, "x")),
        ("charge_id=7", None, C("charge_id", "=", NUMBER, Decimal(7))),
        ("vip=TRUE", None, C("vip", "=", BOOL, True)),
        ("vip!=false", None, C("vip", "!=", BOOL, False)),
        (
            "placed_at>=2026-12-01T09:00:00",
            None,
            C("placed_at", ">=", TIME, datetime(2026, 12, 1, 9, tzinfo=UTC)),
        ),
        (
            "placed_at<2026-12-01T10:00:00+01:00",
            None,
            C(
                "placed_at",
                "<",
                TIME,
                datetime(2026, 12, 1, 10, tzinfo=timezone(timedelta(hours=1))),
            ),
        ),
    ],
)
def test_a_filter_is_typed_by_its_fields_kind(
    text: str, saga: str | None, expected: SearchCondition
) -> None:
    assert registry().search_filter([text], saga) == (expected,)


@pytest.mark.parametrize(
    ("text", "saga", "message"),
    [
        ("customer_id", None, r"'customer_id' is not NAME OP VALUE with OP one of = != >"),
        ("=c-17", None, r"is not NAME OP VALUE"),
        (
            "customer=c-17",
            None,
            r"no loaded saga declares a search field 'customer' \(search fields there are: "
            r"amount, charge_id, customer_id, placed_at, vip\)",
        ),
        ("vip=true", "invoice", r"search fields there are: amount, customer_id\)"),
        ("vip=true", "nothing", r"search fields there are: none\)"),
        (
            "amount>1000",
            None,
            r"sagas declare 'amount' with different types \(text in invoice v1; number in "
            r"order v2\): filter by one saga name as well",
        ),
        ("amount>12x", "order", r"'amount' is a number: '12x' is not one"),
        ("amount>NaN", "order", r"'amount' is a number: 'NaN' is not one"),
        ("vip>true", None, r"'vip' is true or false: compare it with = or !="),
        ("vip=yes", None, r"'vip' is true or false, not 'yes'"),
        ("placed_at>yesterday", None, r"'placed_at' is a moment: 'yesterday' is not ISO 8601"),
        ("customer_id=" + "c" * 201, None, r"indexed up to 200 characters; this value has 201"),
    ],
)
def test_a_filter_that_cannot_apply_is_refused_saying_what_to_write(
    text: str, saga: str | None, message: str
) -> None:
    with pytest.raises(InvalidFilter, match=message):
        registry().search_filter([text], saga)


def test_at_most_ten_filters() -> None:
    with pytest.raises(InvalidFilter, match="11 search filters given; at most 10"):
        registry().search_filter(["vip=true"] * 11)


def test_a_condition_holds_only_for_a_saga_with_a_value_of_its_kind() -> None:
    over = C("amount", ">", NUMBER, Decimal(1000))
    assert over.holds(SearchValue("amount", NUMBER, Decimal("1000.01")))
    assert not over.holds(SearchValue("amount", NUMBER, Decimal("1000.00")))
    assert not over.holds(SearchValue("amount", TEXT, "2000"))
    assert not over.holds(None)
    other = C("customer_id", "!=", TEXT, "c-17")
    assert other.holds(SearchValue("customer_id", TEXT, "c-18"))
    assert not other.holds(None)  # no value: no match, even for !=
    # Text compares by code point: "Z" < "a" < "é".
    before = C("customer_id", "<", TEXT, "a")
    assert before.holds(SearchValue("customer_id", TEXT, "Z"))
    assert not before.holds(SearchValue("customer_id", TEXT, "é"))
