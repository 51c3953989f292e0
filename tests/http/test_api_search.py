"""Search fields over the API and the CLI (issue 23): order sagas v4 started and completed
through the API on a real database, then found by their search fields with `where=` and
`saga list --where`, over the API and on the database. Each filter returns exactly the sagas
whose input (or output) matches it, computed here from what was started. Bulk actions take
the same conditions in their filter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from adapters.http.serve import Bind, listen, serve
from sagas import order
from tests.http.conftest import OPERATOR, TOKENS, Api, assert_problem, order_input
from tests.http.test_cli_api import Served

# The order saga's versions, as `saga` loads them from SAGA_MODULES (sagas.order).
ORDER_SAGAS = (order.saga, order.order_v3, order.order_v2, order.order_v1)
AMOUNTS = ("25.00", "999.99", "1000.00", "1000.01", "2500.00", "12.50", "1000", "80.00")


@dataclass(frozen=True)
class Placed:
    key: str
    saga_id: UUID
    customer: str
    amount: Decimal
    charge_id: int | None  # completed: the charge its output names


Filter = tuple[list[str], Callable[[Placed], bool]]
# Each filter and which sagas it must return.
FILTERS: list[Filter] = [
    (["customer_id=c-2"], lambda p: p.customer == "c-2"),
    (["customer_id!=c-2"], lambda p: p.customer != "c-2"),
    (["customer_id>=c-3"], lambda p: p.customer >= "c-3"),
    (["amount>1000"], lambda p: p.amount > 1000),
    (["amount=1000"], lambda p: p.amount == 1000),
    (
        ["amount>=999.99", "amount<=1000.01"],
        lambda p: Decimal("999.99") <= p.amount <= Decimal("1000.01"),
    ),
    (["customer_id=c-1", "amount<100"], lambda p: p.customer == "c-1" and p.amount < 100),
    (["charge_id>0"], lambda p: p.charge_id is not None),
    (["charge_id=9006"], lambda p: p.charge_id == 9006),
    (
        ["customer_id=c-4", "charge_id>=9000"],
        lambda p: p.customer == "c-4" and p.charge_id is not None,
    ),
    (["customer_id=nobody"], lambda p: False),
]


async def place_orders(api: Api) -> list[Placed]:
    """24 orders of four customers; the small ones of every third are completed, charged
    as 9000 + their number. The large ones wait for the fraud review: running."""
    placed = []
    for n in range(24):
        customer, amount = f"c-{n % 4 + 1}", AMOUNTS[n % len(AMOUNTS)]
        key = f"s-{n:02}"
        saga_id = await api.start(key, order_input(key, customer_id=customer, amount=amount))
        charge_id = None
        if n % 3 == 0 and Decimal(amount) <= order.REVIEW_ABOVE:
            charge_id = 9000 + n
            for step in ("reserve_credit", "reserve_stock"):
                await api.reply(saga_id, step, result={"reservation_id": n})
            await api.reply(
                saga_id, "charge_payment", result={"charge_id": charge_id, "charged": amount}
            )
            await api.reply(saga_id, "notify_customer")
        placed.append(Placed(key, saga_id, customer, Decimal(amount), charge_id))
    detail = (await api.client.get(f"/api/sagas/{placed[6].saga_id}")).json()
    assert (detail["status"], detail["output"]["charge_id"]) == ("completed", 9006)
    assert len({p.charge_id for p in placed if p.charge_id}) == 6
    return placed


@pytest.fixture
async def served(make_api: Any, database_url: str) -> AsyncIterator[Served]:
    api: Api = await make_api(
        sagas=ORDER_SAGAS,
        api_tokens=TOKENS,
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )
    server = await serve(api.app, listen(Bind("127.0.0.1", 0)))
    try:
        yield Served(api, f"http://{server.address}", database_url)
    finally:
        await server.stop()


async def api_keys(api: Api, where: list[str], **params: Any) -> list[str]:
    """Every saga the list returns, page after page (3 a page: the cursor is crossed)."""
    keys: list[str] = []
    cursor = None
    while True:
        query = {"where": where, "limit": 3, **params, **({"cursor": cursor} if cursor else {})}
        answer = await api.client.get("/api/sagas", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        keys += [s["key"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return sorted(keys)


async def test_filters_return_exactly_the_matching_sagas(served: Served) -> None:
    api = served.api
    placed = await place_orders(api)
    for where, matches in FILTERS:
        expected = sorted(p.key for p in placed if matches(p))
        assert await api_keys(api, where) == expected, where
        args = [a for w in where for a in ("--where", w)]
        for url in (True, False):  # the CLI over the API, and on the database
            code, out, err = await served.saga("list", *args, "--json", url=url)
            assert code == 0, err
            assert sorted(s["key"] for s in json.loads(out)) == expected, (where, url)
    # With the other filters: every one must hold.
    completed = sorted(p.key for p in placed if p.customer == "c-1" and p.charge_id)
    assert await api_keys(api, ["customer_id=c-1"], status="completed") == completed
    assert await api_keys(api, ["amount>1000"], saga="order", version=3) == []
    # The table shows them too.
    code, out, _ = await served.saga("list", "--where", "charge_id=9006", url=False)
    assert code == 0 and "s-06" in out and "completed" in out
    assert len(out.strip().splitlines()) == 3  # the header, its rule and the one saga


async def test_a_filter_that_cannot_apply_says_what_to_write(served: Served) -> None:
    api = served.api
    for where, says in [
        (
            "customer=c-17",
            "no loaded saga declares a search field 'customer' (search fields there are: "
            "amount, charge_id, customer_id)",
        ),
        ("amount>lots", "'amount' is a number: 'lots' is not one"),
        ("amount", "is not NAME OP VALUE"),
    ]:
        answer = await api.client.get("/api/sagas", params={"where": where})
        body = assert_problem(answer, 400, says=says)
        assert body["type"] == "urn:saga:problem:bad-filter"
        for url in (True, False):
            code, out, err = await served.saga("list", "--where", where, url=url)
            assert (code, out) == (2, ""), err
            assert says in err
    # Over 10 conditions: refused before any is read.
    answer = await api.client.get("/api/sagas", params={"where": ["amount>1"] * 11})
    assert answer.status_code == 422
    # An empty condition (a blank form field) is none.
    assert (await api.client.get("/api/sagas", params={"where": ""})).status_code == 200


async def test_a_version_without_search_fields_is_found_by_none(make_api: Any) -> None:
    """v3 declares no search field: its sagas have no values, whatever their input."""
    api: Api = await make_api(sagas=ORDER_SAGAS)
    await api.start("v3", order_input("v3", customer_id="c-2"), version=3)
    v4 = await api.start("v4", order_input("v4", customer_id="c-2"))
    assert v4
    assert await api_keys(api, ["customer_id=c-2"]) == ["v4"]
    assert await api_keys(api, ["customer_id!=c-9"]) == ["v4"]


async def test_search_filters_pick_the_sagas_of_a_bulk_action(served: Served) -> None:
    """`where` is part of the filter, so a bulk action takes it too: over the API, and with
    the CLI's filter form on the database and over the API."""
    api = served.api
    customers = {f"b-{n}": f"c-{n % 3}" for n in range(6)}
    ids = {
        key: await api.start(key, order_input(key, customer_id=customer))
        for key, customer in customers.items()
    }

    async def statuses() -> dict[str, str]:
        found = {}
        for key, saga_id in ids.items():
            found[key] = (await api.client.get(f"/api/sagas/{saga_id}")).json()["status"]
        return found

    answer = await api.client.post(
        "/api/bulk/pause",
        json={"filter": {"where": ["customer_id=c-1"]}, "reason": "c-1 disputes", "who": "ann"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"]["applied"] == 2
    assert {k for k, s in (await statuses()).items() if s == "paused"} == {"b-1", "b-4"}

    code, out, err = await served.saga(
        "pause", "--where", "customer_id>=c-2", "-r", "c-2 too", url=False
    )
    assert code == 0, err
    assert {k for k, s in (await statuses()).items() if s == "paused"} == {
        "b-1",
        "b-2",
        "b-4",
        "b-5",
    }
    code, out, err = await served.saga("resume", "--where", "customer_id=c-1", "-r", "settled")
    assert code == 0, err
    assert {k for k, s in (await statuses()).items() if s == "paused"} == {"b-2", "b-5"}

    bad = await api.client.post(
        "/api/bulk/pause", json={"filter": {"where": ["customer=c-1"]}, "reason": "x"}
    )
    assert_problem(bad, 400, says="no loaded saga declares a search field 'customer'")
    for url in (True, False):
        code, out, err = await served.saga("pause", "--where", "customer=c-1", "-r", "x", url=url)
        assert code == 2, (out, err)
        assert "no loaded saga declares a search field 'customer'" in err
