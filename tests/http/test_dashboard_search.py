"""The dashboard's search field filter in a real browser (headless Chromium, as
tests/e2e/test_dashboard.py drives it): order sagas v4 of several customers and amounts,
found by conditions typed into the filter form, the conditions kept in the page's URL (one
`where=` each) and read back from a shared link; a condition that cannot apply shows the
API's reason, which lists the fields there are."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.test_dashboard import Page, browser, serving
from tests.http.conftest import Api, order_input
from tests.http.test_api_search import ORDER_SAGAS

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the e2e tests

ORDERS = {  # key: (customer, amount)
    "d-1": ("c-1", "25.00"),
    "d-2": ("c-2", "40.00"),
    "d-3": ("c-2", "900.00"),
    "d-4": ("c-3", "60.00"),
    "d-5": ("c-2", "75.50"),
}


async def test_the_list_filters_by_search_fields(
    browser: WebDriver, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(sagas=ORDER_SAGAS)
    for key, (customer, amount) in ORDERS.items():
        await api.start(key, order_input(key, customer_id=customer, amount=amount))
    async with serving(api.app) as base:
        await asyncio.to_thread(filter_in_the_browser, Page(browser, base))


def filter_in_the_browser(page: Page) -> None:
    page.open("/")
    page.until(lambda: len(page.rows()) == 5, "every order listed")

    page.type_into("#filters [name=where]", "customer_id=c-2; amount<100")
    page.until(lambda: keys(page) == ["d-2", "d-5"], "the orders of c-2 under 100")
    url = page.driver.current_url
    assert "where=customer_id%3Dc-2&where=amount%3C100" in url, url
    page.shot("30-list-search-fields")

    page.open("/?where=amount%3E50&where=amount%3C=900&saga=order")  # a shared link
    page.until(lambda: keys(page) == ["d-3", "d-4", "d-5"], "the shared link's conditions")
    field = page.driver.find_element(By.CSS_SELECTOR, "#filters [name=where]")
    assert field.get_attribute("value") == "amount>50; amount<=900"

    page.type_into("#filters [name=where]", "customer=c-2")
    alert = page.until(lambda: shown_alert(page), "the API's reason")
    assert "no loaded saga declares a search field 'customer'" in alert
    assert "amount, charge_id, customer_id" in alert
    page.shot("31-list-search-field-unknown")


def shown_alert(page: Page) -> str | None:
    alert = page.driver.find_element(By.ID, "alert")
    return alert.text if alert.is_displayed() else None


def keys(page: Page) -> list[str]:
    return sorted(r["key"] for r in page.rows())
